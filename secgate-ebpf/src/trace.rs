//! `secgate trace`: each traced packet's verdict, with the limit that applied, as an aya-log
//! record the daemon reads. Only reached when `FLAG_TRACE` is set; the lines each CPU emits
//! are held to `TRACE_LINES_PER_SEC`, and the ones held back are counted.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use aya_log_ebpf::info;
use secgate_common::{
    maps::{
        DatapathConfig, FAMILY_V4, MAX_TRACES, RateRule, TRACE_BURST, TRACE_LINES_PER_SEC,
        TraceBudget,
    },
    model::Packet,
    verdict::Reason,
};

#[map]
static SG_TRACE_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_TRACES, 0);
#[map]
static SG_TRACE_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_TRACES, 0);
#[map]
static SG_TRACE_BUDGET: PerCpuArray<TraceBudget> = PerCpuArray::with_max_entries(1, 0);

const BUDGET: RateRule = RateRule::from_rate(TRACE_LINES_PER_SEC, TRACE_BURST);

/// Logs `pkt`'s verdict if its source is traced and this CPU's budget allows. Inlined: a
/// BPF-to-BPF call would take the parsed packet by pointer, which the verifier refuses
/// once it holds packet pointers; the untraced path skips it on one flag test either way.
#[inline(always)]
pub fn emit(ctx: &XdpContext, cfg: &DatapathConfig, pkt: &Packet, reason: Reason) {
    let v4 = [pkt.src[0], pkt.src[1], pkt.src[2], pkt.src[3]];
    let traced = if pkt.family == FAMILY_V4 {
        SG_TRACE_V4.get(Key::new(32, v4)).is_some()
    } else {
        SG_TRACE_V6.get(Key::new(128, pkt.src)).is_some()
    };
    if !traced || !within_budget() {
        return;
    }
    let (limit, rule) = crate::limiter::select_rule(cfg, pkt);
    let (sport, dport, syn) = pkt.l4().map_or((0, 0, 0), |l| (l.sport, l.dport, u8::from(l.syn)));
    let (pps, burst) = if rule.is_unlimited() { (0, 0) } else { (rule.pps(), rule.burst()) };
    let verdict = reason.name();
    let (proto, fragment) = (pkt.proto, u8::from(pkt.fragment));
    let (lproto, lport, lsyn) = (limit.proto, limit.port, limit.syn_only);
    // Two calls: aya-log formats `{:i}` by the argument's type, [u8; 4] or [u8; 16].
    if pkt.family == FAMILY_V4 {
        info!(
            ctx,
            "src={:i} proto={} sport={} dport={} syn={} fragment={} verdict={} limit_proto={} limit_port={} limit_syn={} pps={} burst={}",
            v4,
            proto,
            sport,
            dport,
            syn,
            fragment,
            verdict,
            lproto,
            lport,
            lsyn,
            pps,
            burst
        );
    } else {
        info!(
            ctx,
            "src={:i} proto={} sport={} dport={} syn={} fragment={} verdict={} limit_proto={} limit_port={} limit_syn={} pps={} burst={}",
            pkt.src,
            proto,
            sport,
            dport,
            syn,
            fragment,
            verdict,
            lproto,
            lport,
            lsyn,
            pps,
            burst
        );
    }
}

/// Takes one line from this CPU's budget, or counts it as held back.
#[inline(always)]
fn within_budget() -> bool {
    let Some(budget) = SG_TRACE_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a BPF helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU slot owned by this CPU while the program runs.
    unsafe {
        let base = BUDGET.rebase((*budget).tat_ns, now);
        match BUDGET.admit(base, now) {
            Some(next) => {
                (*budget).tat_ns = next;
                true
            }
            None => {
                (*budget).tat_ns = base;
                (*budget).suppressed += 1;
                false
            }
        }
    }
}
