//! What the gateway needs of the datapath, as a trait: the client table every
//! LAN shares, seen as "let this MAC through at these speeds with this
//! budget", "hold it in the garden", "how many bytes has it moved".
//!
//! - [`PinnedDatapath`]: the real one, over the pinned maps of the LANs
//!   ([`crate::dataplane::Maps`]); in HTB mode it also keeps every LAN's classes.
//! - [`MemDatapath`]: an in-memory one that meters and enforces budgets as the
//!   kernel does, for tests of the money path that need no kernel.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use session_common::{MacAddr, POLICY_ALLOWED, POLICY_QUOTA, STAT_BINDINGS_FULL};

use crate::{
    dataplane::{BindingSweep, Enforced, Forgotten, IdleTracker, Maps, Pressure, RateLimit},
    error::{AgentError, Result},
};

/// One attached LAN interface. Every LAN's maps share one client table (see
/// [`crate::dataplane::attach`]): a device has one meter, one data budget and
/// one speed limit whichever LAN it uses.
pub struct Lan {
    pub name: String,
    pub maps: Mutex<Maps>,
}

/// The datapath as the gateway drives it. Every method is quick (shared
/// memory) except where HTB classes or the bindings map are touched.
pub trait Datapath: Send + Sync {
    /// The identity of the meters: counters of another epoch started again
    /// from zero. `None` without a client table (no LAN).
    fn epoch(&self) -> Option<u64>;
    /// The client's slot in the table, if it has one.
    fn slot_of(&self, mac: &MacAddr) -> Option<u32>;
    /// Up plus down bytes the client in `slot` moved across the gateway.
    fn usage_bytes(&self, slot: u32) -> Result<u64>;
    /// Up and down bytes of the client in `slot`, apart (the sum is
    /// [`Datapath::usage_bytes`]).
    fn usage_split(&self, slot: u32) -> Result<(u64, u64)> {
        Ok((0, self.usage_bytes(slot)?))
    }
    /// [`Datapath::usage_bytes`] of many slots at once, into `out` (as long
    /// as `slots`): the poll's read.
    fn usage_into(&self, slots: &[u32], out: &mut [u64]) -> Result<()> {
        for (o, &s) in out.iter_mut().zip(slots) {
            *o = self.usage_bytes(s)?;
        }
        Ok(())
    }
    /// Adds to `out` the slots whose clients moved traffic since the last
    /// call (and forgets them); false when the datapath cannot tell, and only
    /// reading every slot does.
    fn take_moved(&self, out: &mut Vec<u32>) -> Result<bool>;
    /// Lets a client through at these speeds, with `budget` bytes of data
    /// (`None`: no data limit). With `fresh_budget` false, a budget the
    /// datapath is already spending for it is left to run down.
    fn allow(
        &self,
        mac: &MacAddr,
        up: RateLimit,
        down: RateLimit,
        budget: Option<i64>,
        fresh_budget: bool,
    ) -> Result<()>;
    /// Holds a client in the walled garden (nothing to do for one without a slot).
    fn block(&self, mac: &MacAddr) -> Result<()>;
    /// Packets the client in `slot` sent, received or had dropped (wrapping):
    /// it was active when this changed. `None` when the slot holds no client.
    fn packets(&self, slot: u32) -> Result<Option<u64>>;
    /// Frees the addresses bound to the client.
    fn release_bindings(&self, mac: &MacAddr) -> Result<()>;
    /// The MAC the datapath bound `ip` to (with address binding on), if any.
    fn bound_mac(&self, ip: std::net::IpAddr) -> Result<Option<MacAddr>>;
    /// The clients in slots `first..first + len` as the datapath enforces
    /// them, and the slot the next window starts at (0 after the last slot
    /// in use; a `first` beyond them starts at 0).
    fn enforced(&self, first: u32, len: u32) -> Result<(Vec<Enforced>, u32)>;
    /// Forgets clients idle for `idle` that are not allowed and not `keep`.
    fn forget_idle(
        &self,
        tracker: &mut IdleTracker,
        now: Instant,
        idle: Duration,
        pressure: Pressure,
        keep: &dyn Fn(&MacAddr) -> bool,
    ) -> Result<Forgotten>;
    /// Slots ready for new clients.
    fn free_slots(&self) -> u64;
    /// Clients holding a slot.
    fn clients_live(&self) -> u64;
    /// Tells the datapath the gateway's addresses as the kernel has them now.
    fn refresh_gateway_addrs(&self) -> Result<()>;
    /// Removes address bindings unused for `ttl` (the datapath treats them
    /// as free already), and counts each client's addresses again.
    fn sweep_bindings(&self, ttl: Duration) -> Result<BindingSweep>;
    /// Tells the datapath that an address binding unused for `ttl` is free.
    fn set_bind_ttl(&self, ttl: Duration);
    /// Address claims the datapath refused for lack of room (a full binding
    /// table, or a client at its most addresses) since it was attached.
    fn binding_claims_refused(&self) -> Result<u64>;
    /// The attached LANs (none for an in-memory datapath).
    fn lans(&self) -> &[Lan];
}

/// The datapath of the attached LANs, through their pinned maps.
pub struct PinnedDatapath {
    lans: Vec<Lan>,
}

impl PinnedDatapath {
    pub fn new(lans: Vec<Lan>) -> Self {
        Self { lans }
    }

    /// The client table, through the first LAN's maps.
    fn table(&self) -> Option<std::sync::MutexGuard<'_, Maps>> {
        self.lans.first().map(|l| lock(&l.maps))
    }
}

/// A poisoned lock only means another thread panicked while holding it; the
/// maps are shared memory the kernel keeps consistent, so go on.
fn lock(m: &Mutex<Maps>) -> std::sync::MutexGuard<'_, Maps> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Datapath for PinnedDatapath {
    fn epoch(&self) -> Option<u64> {
        self.table().map(|m| m.epoch())
    }

    fn slot_of(&self, mac: &MacAddr) -> Option<u32> {
        self.table()?.slot_of(mac)
    }

    fn usage_bytes(&self, slot: u32) -> Result<u64> {
        match self.table() {
            Some(m) => m.usage_bytes(slot),
            None => Ok(0),
        }
    }

    fn usage_split(&self, slot: u32) -> Result<(u64, u64)> {
        match self.table() {
            Some(m) => m.usage_split(slot),
            None => Ok((0, 0)),
        }
    }

    fn packets(&self, slot: u32) -> Result<Option<u64>> {
        match self.table() {
            Some(m) => m.packets(slot),
            None => Ok(None),
        }
    }

    fn take_moved(&self, out: &mut Vec<u32>) -> Result<bool> {
        Ok(self.table().is_some_and(|m| m.take_moved(out)))
    }

    fn usage_into(&self, slots: &[u32], out: &mut [u64]) -> Result<()> {
        let Some(m) = self.table() else {
            out.fill(0);
            return Ok(());
        };
        for (o, &s) in out.iter_mut().zip(slots) {
            *o = m.usage_bytes(s)?;
        }
        Ok(())
    }

    /// Speed first (and in HTB mode every LAN's classes), then the budget,
    /// then allow: the client is never let through without its limits.
    fn allow(
        &self,
        mac: &MacAddr,
        up: RateLimit,
        down: RateLimit,
        budget: Option<i64>,
        fresh_budget: bool,
    ) -> Result<()> {
        let Some((first, rest)) = self.lans.split_first() else {
            return Ok(());
        };
        let slot = {
            let mut maps = lock(&first.maps);
            let slot = maps.ensure_slot(mac)?;
            maps.set_rates(slot, up, down)?;
            let live = maps.flags_of(slot) & (POLICY_ALLOWED | POLICY_QUOTA)
                == POLICY_ALLOWED | POLICY_QUOTA;
            if fresh_budget || !live || budget.is_none() {
                maps.set_budget(slot, budget)?;
            }
            slot
        };
        for lan in rest {
            lock(&lan.maps).mirror_classes(slot)?;
        }
        lock(&first.maps).set_allowed(mac, true)?;
        Ok(())
    }

    fn block(&self, mac: &MacAddr) -> Result<()> {
        if let Some(mut maps) = self.table() {
            if maps.slot_of(mac).is_some() {
                maps.set_allowed(mac, false)?;
            }
        }
        Ok(())
    }

    fn release_bindings(&self, mac: &MacAddr) -> Result<()> {
        if let Some(maps) = self.table() {
            maps.release_bindings(mac)?;
        }
        Ok(())
    }

    fn bound_mac(&self, ip: std::net::IpAddr) -> Result<Option<MacAddr>> {
        match self.table() {
            Some(maps) => maps.binding_of(ip),
            None => Ok(None),
        }
    }

    fn enforced(&self, first: u32, len: u32) -> Result<(Vec<Enforced>, u32)> {
        match self.table() {
            Some(m) => m.enforced(first, len),
            None => Ok((Vec::new(), 0)),
        }
    }

    fn forget_idle(
        &self,
        tracker: &mut IdleTracker,
        now: Instant,
        idle: Duration,
        pressure: Pressure,
        keep: &dyn Fn(&MacAddr) -> bool,
    ) -> Result<Forgotten> {
        match self.table() {
            Some(m) => m.forget_idle(tracker, now, idle, pressure, keep),
            None => Ok(Forgotten::default()),
        }
    }

    fn free_slots(&self) -> u64 {
        self.table().map_or(0, |m| m.free_slots())
    }

    fn clients_live(&self) -> u64 {
        self.table().map_or(0, |m| m.clients_live())
    }

    fn refresh_gateway_addrs(&self) -> Result<()> {
        for lan in &self.lans {
            let addrs = crate::iface::gateway_addresses(&lan.name)?;
            lock(&lan.maps).set_gateway_addrs(&addrs);
        }
        Ok(())
    }

    fn sweep_bindings(&self, ttl: Duration) -> Result<BindingSweep> {
        match self.table() {
            Some(m) => m.sweep_bindings(ttl),
            None => Ok(BindingSweep::default()),
        }
    }

    fn set_bind_ttl(&self, ttl: Duration) {
        for lan in &self.lans {
            lock(&lan.maps).set_bind_ttl(ttl);
        }
    }

    fn binding_claims_refused(&self) -> Result<u64> {
        let mut n = 0u64;
        for lan in &self.lans {
            n = n.wrapping_add(lock(&lan.maps).stat(STAT_BINDINGS_FULL)?);
        }
        Ok(n)
    }

    fn lans(&self) -> &[Lan] {
        &self.lans
    }
}

/// A client of the in-memory datapath.
#[derive(Debug, Clone, Copy, Default)]
struct MemClient {
    slot: u32,
    flags: u32,
    bytes: u64,
    /// Packets sent, passed or not.
    packets: u64,
    budget: i64,
    up: RateLimit,
    down: RateLimit,
}

/// An in-memory datapath for tests: it meters the traffic a test sends
/// through [`MemDatapath::send`] and spends budgets the way the kernel does
/// (a packet passes while any budget is left, so the overshoot is less than
/// one packet). Speed limits are recorded, not enforced.
pub struct MemDatapath {
    epoch: u64,
    clients: Mutex<HashMap<MacAddr, MemClient>>,
    /// Slots that passed traffic since [`Datapath::take_moved`] last looked;
    /// `None` for a datapath that cannot tell (as pins before the bits).
    moved: Option<Mutex<Vec<u32>>>,
}

impl MemDatapath {
    /// A table of its own identity (`epoch`, not 0).
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch: epoch.max(1),
            clients: Mutex::new(HashMap::new()),
            moved: Some(Mutex::new(Vec::new())),
        }
    }

    /// [`MemDatapath::new`], but it cannot tell which clients moved traffic.
    pub fn without_moved(epoch: u64) -> Self {
        Self {
            moved: None,
            ..Self::new(epoch)
        }
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<MacAddr, MemClient>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A packet of `len` IP bytes from or to `mac` across the gateway: true
    /// when it passed (and was metered), false when the client was held or
    /// its budget was spent. A new MAC takes a slot, as in the kernel.
    pub fn send(&self, mac: &MacAddr, len: u64) -> bool {
        self.pass(mac, len, true)
    }

    /// [`MemDatapath::send`], but its slot is not named as moved: a move the
    /// datapath did not tell, which the poll's turn of checks still charges.
    pub fn send_untold(&self, mac: &MacAddr, len: u64) -> bool {
        self.pass(mac, len, false)
    }

    fn pass(&self, mac: &MacAddr, len: u64, tell: bool) -> bool {
        let mut clients = self.clients();
        let next = clients.len() as u32;
        let c = clients.entry(*mac).or_insert(MemClient {
            slot: next,
            ..MemClient::default()
        });
        c.packets += 1;
        if c.flags & POLICY_ALLOWED == 0 {
            return false;
        }
        if c.flags & POLICY_QUOTA != 0 {
            if c.budget <= 0 {
                return false;
            }
            c.budget -= len as i64;
        }
        c.bytes += len;
        let slot = c.slot;
        drop(clients);
        if let Some(m) = self.moved.as_ref().filter(|_| tell) {
            m.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
        }
        true
    }

    /// Whether the client is let through.
    pub fn allowed(&self, mac: &MacAddr) -> bool {
        self.clients()
            .get(mac)
            .is_some_and(|c| c.flags & POLICY_ALLOWED != 0)
    }

    /// The budget being spent for the client, if one is.
    pub fn budget(&self, mac: &MacAddr) -> Option<i64> {
        self.clients()
            .get(mac)
            .filter(|c| c.flags & POLICY_QUOTA != 0)
            .map(|c| c.budget)
    }
}

impl Datapath for MemDatapath {
    fn epoch(&self) -> Option<u64> {
        Some(self.epoch)
    }

    fn take_moved(&self, out: &mut Vec<u32>) -> Result<bool> {
        let Some(m) = &self.moved else {
            return Ok(false);
        };
        let mut moved = m.lock().unwrap_or_else(|p| p.into_inner());
        moved.sort_unstable();
        moved.dedup();
        out.append(&mut moved);
        Ok(true)
    }

    fn slot_of(&self, mac: &MacAddr) -> Option<u32> {
        self.clients().get(mac).map(|c| c.slot)
    }

    fn usage_bytes(&self, slot: u32) -> Result<u64> {
        self.clients()
            .values()
            .find(|c| c.slot == slot)
            .map(|c| c.bytes)
            .ok_or_else(|| AgentError::NoEntry {
                iface: "memory".into(),
                slot,
            })
    }

    fn allow(
        &self,
        mac: &MacAddr,
        up: RateLimit,
        down: RateLimit,
        budget: Option<i64>,
        fresh_budget: bool,
    ) -> Result<()> {
        let mut clients = self.clients();
        let next = clients.len() as u32;
        let c = clients.entry(*mac).or_insert(MemClient {
            slot: next,
            ..MemClient::default()
        });
        (c.up, c.down) = (up, down);
        let live = c.flags & (POLICY_ALLOWED | POLICY_QUOTA) == POLICY_ALLOWED | POLICY_QUOTA;
        if fresh_budget || !live || budget.is_none() {
            match budget {
                Some(b) => {
                    c.budget = b;
                    c.flags |= POLICY_QUOTA;
                }
                None => c.flags &= !POLICY_QUOTA,
            }
        }
        c.flags |= POLICY_ALLOWED;
        Ok(())
    }

    fn packets(&self, slot: u32) -> Result<Option<u64>> {
        Ok(self
            .clients()
            .values()
            .find(|c| c.slot == slot)
            .map(|c| c.packets))
    }

    fn block(&self, mac: &MacAddr) -> Result<()> {
        if let Some(c) = self.clients().get_mut(mac) {
            c.flags &= !POLICY_ALLOWED;
        }
        Ok(())
    }

    fn release_bindings(&self, _mac: &MacAddr) -> Result<()> {
        Ok(())
    }

    fn bound_mac(&self, _ip: std::net::IpAddr) -> Result<Option<MacAddr>> {
        Ok(None)
    }

    fn enforced(&self, first: u32, len: u32) -> Result<(Vec<Enforced>, u32)> {
        let clients = self.clients();
        // Slots are handed out in turn and never freed.
        let used = clients.len() as u32;
        let first = if first >= used { 0 } else { first };
        let end = first.saturating_add(len).min(used);
        let mut out: Vec<Enforced> = clients
            .iter()
            .filter(|(_, c)| (first..end).contains(&c.slot))
            .map(|(mac, c)| Enforced {
                slot: c.slot,
                mac: *mac,
                flags: c.flags,
                up: c.up,
                down: c.down,
            })
            .collect();
        out.sort_unstable_by_key(|e| e.slot);
        Ok((out, if end >= used { 0 } else { end }))
    }

    /// Clients are never forgotten: the table holds every MAC it saw.
    fn forget_idle(
        &self,
        _tracker: &mut IdleTracker,
        _now: Instant,
        _idle: Duration,
        _pressure: Pressure,
        _keep: &dyn Fn(&MacAddr) -> bool,
    ) -> Result<Forgotten> {
        Ok(Forgotten::default())
    }

    fn free_slots(&self) -> u64 {
        0
    }

    fn clients_live(&self) -> u64 {
        0
    }

    fn refresh_gateway_addrs(&self) -> Result<()> {
        Ok(())
    }

    fn sweep_bindings(&self, _ttl: Duration) -> Result<BindingSweep> {
        Ok(BindingSweep::default())
    }

    fn set_bind_ttl(&self, _ttl: Duration) {}

    fn binding_claims_refused(&self) -> Result<u64> {
        Ok(0)
    }

    fn lans(&self) -> &[Lan] {
        &[]
    }
}
