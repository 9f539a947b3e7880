//! Shaping mode (`session-agent run --shaper htb`): a shaped client's packets
//! are counted as usual, then handed to the client's HTB class instead of
//! passing the token bucket. `skb->priority` names the class (HTB classifies
//! by it when its major is the qdisc's handle); download goes to the LAN's
//! own HTB, upload is redirected to the LAN's IFB device, whose HTB queues it
//! and then puts it back on the LAN's ingress path.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::map, maps::Array, programs::TcContext};
use session_common::{shape_classid, ShaperConfig, SHAPE_HTB_MAJOR};

use crate::mem::{at, redirect, set_skb_field, skb_field, Cells};
use crate::BPF_F_MMAPABLE;

#[map(name = "SHAPER")]
static SHAPER: Array<ShaperConfig> = Array::pinned(1, BPF_F_MMAPABLE);

/// Puts the packet in the slot's HTB class; false for the one slot without a class.
#[inline(always)]
fn classify(ctx: &TcContext, slot: u32) -> bool {
    match shape_classid(slot) {
        Some(id) => {
            set_skb_field!(ctx, priority, id);
            true
        }
        None => false,
    }
}

/// A download packet of a shaped client: on to the LAN's HTB in its class.
#[inline(always)]
pub fn download(ctx: &TcContext, slot: u32) -> i32 {
    classify(ctx, slot);
    TC_ACT_UNSPEC
}

/// An upload packet of a shaped client: to the IFB device's HTB in its class.
#[inline(always)]
pub fn upload(ctx: &TcContext, slot: u32) -> i32 {
    let Some(cfg) = SHAPER.cell(0) else {
        return TC_ACT_UNSPEC;
    };
    let ifb = at!(cfg, ifb_ifindex).get();
    if ifb == 0 || !classify(ctx, slot) {
        return TC_ACT_UNSPEC;
    }
    redirect(ifb)
}

/// The IFB device gives shaped upload back to the LAN's ingress path marked
/// to skip TC (6.18 does not run the program on it again). Should a kernel run
/// it anyway, the packet is recognised by its class in `skb->priority` (which
/// nothing else on an ingress path sets to this major): it is already counted
/// and passes untouched instead of being counted and redirected again.
#[inline(always)]
pub fn reinjected(ctx: &TcContext) -> bool {
    let priority = skb_field!(ctx, priority);
    priority >> 16 == SHAPE_HTB_MAJOR
}
