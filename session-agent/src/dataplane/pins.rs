//! Where the datapath's maps are pinned, and whether pins left by another
//! version can be used: the shared client table under `<pin root>/:clients/`,
//! each LAN's own maps under `<pin root>/<iface>/`.

use std::path::{Path, PathBuf};

use session_common::*;

use super::mmap::MmapArray;
use crate::error::{AgentError, Result};

/// Where `iface`'s own maps and links are pinned.
pub fn pin_dir(pin_root: &Path, iface: &str) -> PathBuf {
    pin_root.join(iface)
}

/// The directory of the client table every LAN shares. No interface can have
/// this name: a ':' is not allowed in one.
pub const CLIENTS_DIR: &str = ":clients";

/// Where the client table every LAN shares is pinned.
pub fn clients_dir(pin_root: &Path) -> PathBuf {
    pin_root.join(CLIENTS_DIR)
}

/// The maps of the client table every LAN shares.
pub const SHARED_MAPS: [&str; 9] = [
    MAP_CLIENTS,
    MAP_SLOTS,
    MAP_COUNTERS,
    MAP_MOVED,
    MAP_POLICY,
    MAP_SLOT_ALLOC,
    MAP_FREE_SLOTS,
    MAP_BINDINGS,
    MAP_UNPAID_BINDINGS,
];

/// The pinned array maps whose layout the datapath and the agent share, as
/// (name, value size, entries): the shared client table's, then a LAN's.
fn shared_layouts() -> [(&'static str, usize, u32); 6] {
    [
        (MAP_FREE_SLOTS, size_of::<u64>(), MAX_CLIENTS),
        (MAP_CLIENTS, size_of::<ClientEntry>(), INDEX_ENTRIES),
        (MAP_SLOTS, size_of::<u64>(), MAX_CLIENTS),
        (MAP_COUNTERS, size_of::<ClientCounters>(), MAX_CLIENTS),
        (MAP_POLICY, size_of::<ClientPolicy>(), MAX_CLIENTS),
        (MAP_SLOT_ALLOC, size_of::<SlotAllocator>(), 1),
    ]
}

fn lan_layouts() -> [(&'static str, usize, u32); 3] {
    [
        (MAP_SHAPER, size_of::<ShaperConfig>(), 1),
        (MAP_LAN, size_of::<LanConfig>(), 1),
        (MAP_GATE, size_of::<TokenBucket>(), GATE_BUCKETS),
    ]
}

/// Refuses pins made by a version with other map layouts (the loader would
/// reuse them as they are): the shared client table's under `pin_root` and
/// `iface_name`'s own. No pins at all is fine.
pub fn check_pins(pin_root: &Path, iface_name: &str) -> Result<()> {
    let dir = pin_dir(pin_root, iface_name);
    let incompatible = |dir: &Path, reason: String| AgentError::IncompatiblePins {
        iface: iface_name.into(),
        dir: dir.to_path_buf(),
        reason,
    };
    if dir.join(MAP_CLIENTS).exists() {
        return Err(incompatible(
            &dir,
            "pins of a version with a client table per LAN".into(),
        ));
    }
    let shared = clients_dir(pin_root);
    for (dir, layouts) in [(&shared, &shared_layouts()[..]), (&dir, &lan_layouts()[..])] {
        let (first, ..) = layouts[0];
        if !dir.join(first).exists() {
            continue;
        }
        for &(name, value_size, entries) in layouts {
            let path = dir.join(name);
            if !path.exists() && name == MAP_GATE {
                // Pins of the version before the shared limits: the loader adds it.
                continue;
            }
            if !path.exists() {
                return Err(incompatible(dir, format!("no {name} map")));
            }
            let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| {
                AgentError::bpf(format!("reading pinned map {}", path.display()), e)
            })?;
            let kind = info.map_type().ok();
            if kind != Some(aya::maps::MapType::Array)
                || info.value_size() as usize != value_size
                || info.max_entries() != entries
            {
                return Err(incompatible(dir, format!(
                    "{name} is a {kind:?} map of {} entries of {} bytes, expected an array of {entries} entries of {value_size} bytes",
                    info.max_entries(),
                    info.value_size()
                )));
            }
        }
    }
    let alloc = shared.join(MAP_SLOT_ALLOC);
    if alloc.exists() {
        let a = MmapArray::<SlotAllocator>::open_pin(&shared, MAP_SLOT_ALLOC, 1)?;
        let layout = a.get(0).layout.max(1);
        if a.get(0).epoch != 0 && layout != TABLE_LAYOUT {
            return Err(incompatible(
                &shared,
                format!(
                    "a client table of layout {layout}; this version uses layout {TABLE_LAYOUT}"
                ),
            ));
        }
    }
    Ok(())
}
