//! Userspace-only trait implementations.

use crate::*;

/// `aya::Pod` for types the maps hold.
macro_rules! pod {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: the type is `#[repr(C)]`, `Copy`, holds only integers and byte
        // arrays, and has no implicit padding (checked by the size tests below).
        unsafe impl aya::Pod for $t {}
    )*};
}

pod!(
    MacAddr,
    ClientEntry,
    ClientCounters,
    ClientPolicy,
    SlotAllocator,
    GardenKey,
    GardenValue,
    GardenHostKey,
    GardenHostValue,
    HeldFrame,
    ClientEvent,
    ShaperConfig,
    LanConfig,
    AddrKey,
    Binding,
    FragKey,
);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<MacAddr>(), 6);
        assert_eq!(size_of::<GardenHostKey>(), 20);
        assert_eq!(size_of::<GardenHostValue>(), 16);
        assert_eq!(size_of::<HeldFrame>(), 16 + DNS_HELD_MAX as usize);
        assert_eq!(size_of::<ClientEntry>(), 64);
        assert_eq!(core::mem::offset_of!(ClientEntry, ip6_tag), 56);
        assert_eq!(size_of::<ClientCounters>(), 16 * 8);
        assert_eq!(size_of::<TokenBucket>(), 32);
        assert_eq!(size_of::<ClientPolicy>(), 128);
        assert_eq!(size_of::<SlotAllocator>(), 32);
        assert_eq!(size_of::<GardenKey>(), 20);
        assert_eq!(
            size_of::<LanConfig>(),
            4 * 3 + 2 + 6 + 4 * 16 + 16 * 16 + 4 + 7 * 8
        );
        assert_eq!(size_of::<AddrKey>(), 20);
        assert_eq!(size_of::<Binding>(), 16);
        assert_eq!(size_of::<FragKey>(), 12);
        assert_eq!(size_of::<ClientEvent>(), 48);
        assert_eq!(size_of::<ShaperConfig>(), 24);
    }

    #[test]
    fn shape_classids() {
        assert_eq!(shape_classid(0), Some(0x5a_0001));
        assert_eq!(shape_classid(0xfffe), Some(0x5a_ffff));
        assert_eq!(shape_classid(0xffff), None);
    }

    #[test]
    fn mac_round_trip_and_rejects() {
        let m: MacAddr = "AA:bb:0c:dd:ee:0F".parse().unwrap();
        assert_eq!(m.addr, [0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x0f]);
        extern crate std;
        use std::string::ToString;
        assert_eq!(m.to_string(), "aa:bb:0c:dd:ee:0f");
        assert_eq!("aa-bb-0c-dd-ee-0f".parse::<MacAddr>().unwrap(), m);
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:fg",
            "aabb.ccdd.eeff",
            "a:bb:cc:dd:ee:ff1",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad} parsed");
        }
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().unwrap().is_group());
    }
}
