//! `mailpipe top` in a real terminal (tmux): it shows the daemon's jails and bans, `u` lifts the
//! selected ban, `q` quits.

mod common;

use std::io::Write;
use std::process::Command;

use common::{Mailpipe, Need, sasl_line};

/// A tmux server of this test's own, killed with everything in it when dropped.
struct Tmux(String);

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").args(["-L", &self.0]).args(args).output().unwrap()
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Captures the screen until it shows every one of `texts` (a capture may catch a redraw
    /// half done; bounded: the view redraws every second).
    fn wait_for(&self, texts: &[&str]) -> String {
        for _ in 0..20_000 {
            let s = self.screen();
            if texts.iter().all(|t| s.contains(t)) {
                return s;
            }
        }
        panic!("the screen never showed {texts:?}:\n{}", self.screen());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn top_shows_jails_and_bans_unbans_the_selected_and_quits() {
    if let Some(why) = common::missing(&[Need::Program("tmux", "tmux")]) {
        return common::skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let cfg = common::pipeline_with(
        dir.path(),
        "t.ron",
        "Stdin, Udp(listen: \"127.0.0.1:0\")",
        &format!("control: \"{}\",", socket.display()),
    );
    let (mp, mut stdin) = Mailpipe::start_piped(&cfg, 2);
    for _ in 0..5 {
        writeln!(stdin, "{}", sasl_line("203.0.113.5")).unwrap();
    }
    stdin.flush().unwrap();
    assert_eq!(mp.next_ban()["ip"], "203.0.113.5");

    let tmux = Tmux(format!("mailpipe-top-{}", std::process::id()));
    let top = format!("{} top --socket {}", env!("CARGO_BIN_EXE_mailpipe"), socket.display());
    let out = tmux.cmd(&["new-session", "-d", "-s", "top", "-x", "120", "-y", "40", &top]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tmux.wait_for(&["203.0.113.5/32", "postfix-sasl", "dovecot-auth", "threshold", "q quit"]);

    tmux.cmd(&["send-keys", "-t", "top", "u"]);
    tmux.wait_for(&["unbanned 203.0.113.5"]);
    assert!(common::listed(&socket).is_empty());
    let unban = mp.next_ban();
    assert_eq!((unban["kind"].as_str(), unban["ip"].as_str()), (Some("unban"), Some("203.0.113.5")));

    tmux.cmd(&["send-keys", "-t", "top", "q"]);
    assert!(
        (0..20_000).any(|_| !tmux.cmd(&["has-session", "-t", "top"]).status.success()),
        "q quits"
    );
    drop(stdin);
    mp.stop();
}
