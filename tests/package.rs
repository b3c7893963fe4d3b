//! The Debian package as `contrib/deb/build.sh` makes it: what it depends on (what the binary
//! links, never the build tools), what it installs where, the conffile, the units, and a binary
//! that runs.

mod common;

use std::process::Command;

use common::Need;

#[test]
fn the_package_holds_what_a_server_needs_and_depends_on_no_build_tool() {
    if let Some(why) = common::missing(&[
        Need::Program("dpkg-deb", "dpkg"),
        Need::Program("cargo-deb", "cargo install cargo-deb"),
    ]) {
        return common::skip(&why);
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/contrib/deb/build.sh")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deb = format!("{root}/target/debian/mailpipe_{}-1_amd64.deb", env!("CARGO_PKG_VERSION"));
    let field = |f: &str| {
        let o = Command::new("dpkg-deb").args(["-f", &deb, f]).output().unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let depends = field("Depends");
    assert!(depends.contains("libipset13") && depends.contains("libc6"), "{depends}");
    for build_only in ["libclang", "gcc", "libipset-dev", "pkg-config"] {
        assert!(!depends.contains(build_only), "{depends}");
    }
    let list = Command::new("dpkg-deb").args(["-c", &deb]).output().unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    for path in [
        "./usr/sbin/mailpipe",
        "./usr/share/man/man1/mailpipe-run.1.gz",
        "./usr/share/bash-completion/completions/mailpipe",
        "./etc/mailpipe/mailpipe.ron",
        "./usr/lib/systemd/system/mailpipe.service",
        "./usr/lib/systemd/system/mailpipe-firewall.service",
        "./usr/share/mailpipe/actions/abuseipdb-report",
    ] {
        assert!(list.contains(path), "{path} missing:\n{list}");
    }
    // The files (`-x`) and the control part (`-e`), each unpacked in a directory of its own.
    let unpack = |what: &str| {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Command::new("dpkg-deb")
                .args([what, &deb])
                .arg(dir.path())
                .status()
                .unwrap()
                .success()
        );
        dir
    };
    let (dir, ctl) = (unpack("-x"), unpack("-e"));
    assert_eq!(
        std::fs::read_to_string(ctl.path().join("conffiles")).unwrap().trim(),
        "/etc/mailpipe/mailpipe.ron"
    );
    let unit = std::fs::read_to_string(dir.path().join("usr/lib/systemd/system/mailpipe.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/sbin/mailpipe run") && unit.contains("Type=notify"),
        "{unit}"
    );
    // Stripped, and it runs; the shipped configuration checks (without its files installed,
    // `mail.ron` is the built-in copy).
    let bin = dir.path().join("usr/sbin/mailpipe");
    let file = Command::new("file")
        .arg(&bin)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        file.is_empty() || file.contains("stripped") && !file.contains("not stripped"),
        "{file}"
    );
    let check = Command::new(&bin)
        .arg("check")
        .arg("-c")
        .arg(dir.path().join("etc/mailpipe/mailpipe.ron"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}
