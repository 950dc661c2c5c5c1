//! `aya::Pod` for every shared type: they are `#[repr(C)]`, `Copy` and padding-free, so any
//! byte pattern the kernel hands back is a valid value.
use crate::hosts::{HostInfo, HostSet};
use crate::maps::{
    AllowEntry, BucketKey, Counter, DatapathConfig, DenyEntry, LimitKey, OverLimitEvent, RateRule,
    TraceBudget,
};
use crate::sources::SourceSet;

macro_rules! pod {
    ($($t:ty),* $(,)?) => { $(unsafe impl aya::Pod for $t {})* };
}

pod!(
    AllowEntry,
    BucketKey,
    Counter,
    DatapathConfig,
    DenyEntry,
    HostInfo,
    HostSet,
    LimitKey,
    OverLimitEvent,
    RateRule,
    SourceSet,
    TraceBudget,
);
