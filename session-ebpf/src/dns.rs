//! Holding DNS answers to clients that have not paid (`LAN_DNS_SNOOP`, TC
//! egress only), so that a garden name's addresses are in the walled garden
//! before the client can use them.
//!
//! An answer from a garden DNS server (`GARDEN_DNS`) to such a client is copied
//! whole into the `DNS_HELD` ring and dropped; the agent parses it, puts the
//! addresses of garden names into `GARDEN_HOSTS`, and sends the frame on
//! through a packet socket, marked with `dns_mark`, which this program passes.
//! The client's first connection thus never races the learning. When the ring
//! is full (the agent is not reading) answers pass unheld: names still resolve,
//! only their addresses are not learnt.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::map,
    maps::RingBuf,
    programs::TcContext,
};
use session_common::{HeldFrame, DNS_HELD_BYTES, DNS_HELD_MAX, LAN_DNS_SNOOP};

use crate::mem::{at, Cells};
use crate::LAN;

#[map(name = "DNS_HELD")]
static DNS_HELD: RingBuf = RingBuf::pinned(DNS_HELD_BYTES, 0);

const _: () = assert!(DNS_HELD_MAX.is_power_of_two());

/// A frame of a client that has not paid, within the garden and counted:
/// held if it is a DNS answer and the LAN holds them, passed otherwise. The
/// headers are read again here (with bpf_skb_load_bytes, plain scalars), so
/// that the verifier walks this once, not once per way through `handle`.
#[inline(always)]
pub fn hold_answer(ctx: &TcContext) -> i32 {
    let Some(cfg) = LAN.cell(0) else {
        return TC_ACT_UNSPEC;
    };
    let flags = at!(cfg, flags).get();
    if flags & LAN_DNS_SNOOP == 0 || !is_answer(ctx).unwrap_or(false) {
        return TC_ACT_UNSPEC;
    }
    hold(ctx)
}

fn be16(ctx: &TcContext, off: u32) -> Option<u32> {
    ctx.load::<u16>(off as usize)
        .ok()
        .map(|v| u16::from_be(v) as u32)
}

fn byte(ctx: &TcContext, off: u32) -> Option<u32> {
    ctx.load::<u8>(off as usize).ok().map(|v| v as u32)
}

/// UDP with at least a DNS header, or TCP with data, from port 53; IPv4
/// unfragmented or IPv6 without extension headers, through one VLAN tag.
#[inline(always)]
fn is_answer(ctx: &TcContext) -> Option<bool> {
    let mut l3 = 14;
    let mut proto = be16(ctx, 12)?;
    if proto == 0x8100 || proto == 0x88a8 {
        proto = be16(ctx, 16)?;
        l3 = 18;
    }
    let (l4proto, l4, end) = if proto == 0x0800 {
        if be16(ctx, l3 + 6)? & 0x3fff != 0 {
            return Some(false);
        }
        let ihl = (byte(ctx, l3)? & 0x0f) * 4;
        (byte(ctx, l3 + 9)?, l3 + ihl, l3 + be16(ctx, l3 + 2)?)
    } else if proto == 0x86dd {
        (byte(ctx, l3 + 6)?, l3 + 40, l3 + 40 + be16(ctx, l3 + 4)?)
    } else {
        return Some(false);
    };
    if be16(ctx, l4)? != 53 {
        return Some(false);
    }
    Some(match l4proto {
        17 => end >= l4 + 8 + 12,
        6 => end > l4 + (byte(ctx, l4 + 12)? >> 4) * 4,
        _ => false,
    })
}

/// Holds the frame for the agent (`TC_ACT_SHOT`), or lets it pass unheld
/// (too long, or the ring is full).
#[inline(always)]
fn hold(ctx: &TcContext) -> i32 {
    let len = ctx.len();
    if len == 0 || len > DNS_HELD_MAX {
        return TC_ACT_UNSPEC;
    }
    let Some(mut entry) = DNS_HELD.reserve::<HeldFrame>(0) else {
        return TC_ACT_UNSPEC;
    };
    // A length the verifier sees in [1, DNS_HELD_MAX] whatever the compiler
    // made of the test above; equal to `len`, which that test bounds.
    let n = (len.wrapping_sub(1) & (DNS_HELD_MAX - 1)) + 1;
    let f = entry.as_mut_ptr();
    // SAFETY: `frame` is DNS_HELD_MAX bytes of the reserved entry and `n` is
    // at most that; the helper reads from the skb the program was given.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            0,
            (&raw mut (*f).frame) as *mut c_void,
            n,
        )
    };
    if ret != 0 || n != len {
        entry.discard(0);
        return TC_ACT_UNSPEC;
    }
    // SAFETY: `f` points into the reserved entry, which is ours until submitted.
    unsafe {
        (*f).len = n;
        (*f).ifindex = (*ctx.skb.skb).ifindex;
        (*f).held_ns = bpf_ktime_get_ns();
    }
    entry.submit(0);
    TC_ACT_SHOT
}
