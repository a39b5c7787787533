use super::*;

#[test]
fn state_json_parses_and_refuses_garbage() {
    let s = parse_state(
        br#"{"ociVersion":"1.2.0","id":"c1","status":"creating","pid":42,
            "bundle":"/b","annotations":{"org.skiff.kernel":"/fn/echo.hvt"},"root":"/run/crun"}"#,
    )
    .unwrap();
    assert_eq!(s.pid, Some(42));
    assert_eq!(s.annotations[ANN_KERNEL], "/fn/echo.hvt");
    for bad in [&b""[..], b"{", b"[]", br#"{"id":"x"}"#, b"\xff"] {
        let e = parse_state(bad).unwrap_err();
        assert!(matches!(e, HookError::State(_)), "{e}");
        assert!(!e.to_string().contains('\n'));
    }
}

#[test]
fn kernel_paths_stay_inside_the_rootfs() {
    assert_eq!(
        inside_rootfs("/fn/echo.hvt").unwrap(),
        Path::new("fn/echo.hvt")
    );
    assert_eq!(inside_rootfs("fn/./e.hvt").unwrap(), Path::new("fn/e.hvt"));
    for bad in ["", "/", "../x", "/fn/../../etc/passwd", "a\0b"] {
        assert!(inside_rootfs(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn tap_names_are_checked() {
    assert!(net::valid_name("tap0"));
    assert!(net::valid_name("service-1.x_y"));
    for bad in ["", ".", "..", "a/b", "a b", "0123456789abcdef", "tap$"] {
        assert!(!net::valid_name(bad), "{bad:?}");
    }
}
