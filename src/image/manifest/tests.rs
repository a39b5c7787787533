use super::*;

fn bytes(entries: &[MftEntry]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        v.extend_from_slice(&e.name);
        v.extend_from_slice(&e.kind.to_le_bytes());
        v.extend_from_slice(&e.u[0].to_le_bytes());
        v.extend_from_slice(&e.u[1].to_le_bytes());
        v.extend_from_slice(&e.host_private.to_le_bytes());
        v.push(e.attached);
        v.extend_from_slice(&e._pad);
    }
    v
}

#[test]
fn valid_manifest_lists_devices_by_handle() {
    let m = Manifest::parse(&bytes(&[
        MftEntry::reserved_first(),
        MftEntry::new("storage", MFT_DEV_BLOCK_BASIC),
        MftEntry::new("service", MFT_DEV_NET_BASIC),
    ]))
    .unwrap();
    assert_eq!(m.devices.len(), 2);
    assert_eq!(
        m.devices[1],
        Device {
            handle: 2,
            name: "service".into(),
            kind: DeviceKind::Net
        }
    );
    assert_eq!(m.byte_len(), 8 + 3 * 104);
}

#[test]
fn malformed_manifests_are_refused() {
    let r = MftEntry::reserved_first();
    let blk = MftEntry::new("a", MFT_DEV_BLOCK_BASIC);
    assert_eq!(
        Manifest::parse(&[1, 0, 0]).unwrap_err(),
        ManifestError::Short
    );
    assert_eq!(
        Manifest::parse(&bytes(&[])).unwrap_err(),
        ManifestError::Count(0)
    );
    let mut b = bytes(&[r]);
    b[0] = 2;
    assert_eq!(Manifest::parse(&b).unwrap_err(), ManifestError::Version(2));
    let mut b = bytes(&[r]);
    b[4] = 65;
    assert_eq!(Manifest::parse(&b).unwrap_err(), ManifestError::Count(65));
    let mut b = bytes(&[r, blk]);
    b[4] = 1;
    assert!(matches!(
        Manifest::parse(&b).unwrap_err(),
        ManifestError::Size { .. }
    ));
    assert_eq!(
        Manifest::parse(&bytes(&[blk])).unwrap_err(),
        ManifestError::FirstEntry
    );
    assert_eq!(
        Manifest::parse(&bytes(&[r, blk, blk])).unwrap_err(),
        ManifestError::Duplicate(2, "a".into())
    );
    let mut long = blk;
    long.name = [b'x'; 68];
    assert_eq!(
        Manifest::parse(&bytes(&[r, long])).unwrap_err(),
        ManifestError::Unterminated(1)
    );
    let mut att = blk;
    att.attached = 1;
    assert_eq!(
        Manifest::parse(&bytes(&[r, att])).unwrap_err(),
        ManifestError::Attached(1)
    );
    assert_eq!(
        Manifest::parse(&bytes(&[r, MftEntry::new("", 1)])).unwrap_err(),
        ManifestError::EmptyName(1)
    );
    assert_eq!(
        Manifest::parse(&bytes(&[r, MftEntry::new("q", 7)])).unwrap_err(),
        ManifestError::Type(1, 7)
    );
    let max: Vec<MftEntry> = std::iter::once(r)
        .chain((1..64).map(|i| MftEntry::new(&format!("d{i}"), MFT_DEV_BLOCK_BASIC)))
        .collect();
    assert_eq!(Manifest::parse(&bytes(&max)).unwrap().devices.len(), 63);
}
