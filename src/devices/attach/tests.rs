use super::*;
use crate::devices::net::NetTarget;

fn flags(block: &[&str], sizes: &[&str], net: &[&str], macs: &[&str]) -> DeviceFlags {
    let v = |s: &[&str]| s.iter().map(OsString::from).collect();
    DeviceFlags {
        block: v(block),
        block_sector_size: v(sizes),
        net: v(net),
        net_mac: v(macs),
    }
}

#[test]
fn valid_bindings() {
    let b = Bindings::from_flags(&flags(
        &["storage=/tmp/a=b", "s2=/x"],
        &["s2=4096"],
        &["service0=tap0", "service1=@3"],
        &["service1=02:00:00:00:00:01"],
    ))
    .unwrap();
    assert_eq!(b.block[0].path, PathBuf::from("/tmp/a=b"));
    assert_eq!(b.block[0].sector_size, 512);
    assert_eq!(b.block[1].sector_size, 4096);
    assert_eq!(b.net[0].target, NetTarget::Iface("tap0".into()));
    assert_eq!(b.net[1].target, NetTarget::Fd(3));
    assert_eq!(b.net[1].mac, Some([2, 0, 0, 0, 0, 1]));
    assert_eq!(b.net[0].mac, None);
}

#[test]
fn bad_bindings() {
    let e = |f| Bindings::from_flags(&f).unwrap_err();
    assert!(matches!(
        e(flags(&["nopath"], &[], &[], &[])),
        BindingError::Syntax { .. }
    ));
    assert!(matches!(
        e(flags(&["=/x"], &[], &[], &[])),
        BindingError::Name { .. }
    ));
    assert!(matches!(
        e(flags(&["a=/x", "a=/y"], &[], &[], &[])),
        BindingError::Duplicate { .. }
    ));
    assert!(matches!(
        e(flags(&["a=/x"], &["a=521"], &[], &[])),
        BindingError::SectorSize { .. }
    ));
    assert_eq!(
        e(flags(&["a=/x"], &["b=512"], &[], &[])),
        BindingError::SectorSizeUnbound("b".into())
    );
    assert!(matches!(
        e(flags(&[], &[], &["n=@x"], &[])),
        BindingError::Net { .. }
    ));
    assert!(matches!(
        e(flags(&[], &[], &["n=tap0"], &["n=02:00"])),
        BindingError::Mac { .. }
    ));
    assert_eq!(
        e(flags(&[], &[], &["n=tap0"], &["m=02:00:00:00:00:01"])),
        BindingError::MacUnbound("m".into())
    );
}
