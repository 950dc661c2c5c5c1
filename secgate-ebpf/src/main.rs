//! secgate's XDP program: per-source allow, deny and rate-limit verdicts at the NIC.
//!
//! Order: parse → allowlist → denylist (unexpired) → per-source GCRA bucket → verdict (and
//! its trace line, while `secgate trace` runs). Every path leaves through [`finish`], which
//! counts the verdict, so none goes uncounted. The logic
//! mirrors `secgate_common::model`, which the differential test holds it to.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_cxchg is the only 64-bit CAS the bpf target offers")]

mod clock;
mod frame;
mod limiter;
mod maps;
mod parse;
mod trace;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use secgate_common::{
    maps::{DatapathConfig, FLAG_COARSE_CLOCK, FLAG_NO_ALLOW, FLAG_TRACE, STATS_DROPPED},
    model::{Packet, Parsed, verdict},
    verdict::{Action, Reason},
};

use crate::{clock::Clock, frame::Frame};

#[xdp]
pub fn secgate(ctx: XdpContext) -> u32 {
    let frame = Frame::new(&ctx);
    let Some(cfg) = maps::SG_CONFIG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let reason = match parse::parse(&frame) {
        Parsed::NonIp => Reason::NonIp,
        Parsed::Malformed => Reason::Malformed,
        Parsed::Ip(pkt) => {
            let reason = judge(cfg, &pkt);
            if cfg.flags & FLAG_TRACE != 0 {
                trace::emit(&ctx, cfg, &pkt, reason);
            }
            reason
        }
    };
    finish(cfg, reason, frame.len())
}

fn judge(cfg: &DatapathConfig, pkt: &Packet) -> Reason {
    if cfg.flags & FLAG_NO_ALLOW == 0 && maps::allowed(pkt) {
        return Reason::Allow;
    }
    let mut clock = Clock::new(cfg.flags & FLAG_COARSE_CLOCK != 0);
    if maps::denied(pkt, &mut clock) {
        return Reason::Deny;
    }
    limiter::check(cfg, pkt, &mut clock)
}

/// The single exit: counts the verdict and turns it into an XDP action.
#[inline(always)]
fn finish(cfg: &DatapathConfig, reason: Reason, len: u64) -> u32 {
    maps::count(reason as u32, len);
    match verdict(cfg, reason).action {
        Action::Pass => xdp_action::XDP_PASS,
        Action::Drop => {
            maps::count(STATS_DROPPED, len);
            xdp_action::XDP_DROP
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
