use super::*;

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

fn store(files: &[(&str, &str)], name: &str) -> Store {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), files);
    Reader::new(dir.path()).read(name).unwrap().unwrap()
}

fn get(s: &Store, sec: &str, opt: &str) -> Result<Option<String>, String> {
    s.get(sec, opt, &Vars::new(), false).map(|v| v.map(|v| v.s))
}

/// A regex through the converter alone: (rules, ignores) or the first problem.
fn convert(re: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let mut node = parse_regex(re).map_err(|(_, e)| e)?;
    rebase(&mut node, 0);
    let composed = compose(None, node, &mut Vec::new()).map_err(|p| p.message)?;
    let mut budget = 32;
    let (mut rules, mut ignores) = (Vec::new(), Vec::new());
    for b in lower(
        composed,
        LowerMode {
            failure: true,
            mlfid: true,
        },
        &mut budget,
    ) {
        let l = b.map_err(|p| format!("{}@{}", p.message, p.at))?;
        rules.push(emit_all(&concat(l.rule), false).map_err(|(_, w)| w)?);
        for ig in l.ignores {
            ignores.push(emit_all(&concat(ig), true).map_err(|(_, w)| w)?);
        }
    }
    Ok((rules, ignores))
}

#[test]
fn configparser_syntax() {
    let f: Rc<str> = Rc::from("x.conf");
    let ini = parse_ini(
        "# comment\n[DEFAULT]\na = 1 ; inline comment\nb: two;not a comment\n\n[s]\nre = first\n   second\n\n   third\n ; indented comment\nc=%(a)s\n",
        &f,
    )
    .unwrap();
    assert_eq!(
        ini.defaults.iter().map(|(k, v)| (k.as_str(), v.s.as_str())).collect::<Vec<_>>(),
        [("a", "1"), ("b", "two;not a comment")]
    );
    let (name, pos, opts) = &ini.sections[0];
    assert_eq!((name.as_str(), pos.line), ("s", 6));
    assert_eq!(opts[0].1.s, "first\nsecond\n\nthird");
    // Each line of a value knows where it was written.
    assert_eq!(opts[0].1.pos_at(opts[0].1.s.find("third").unwrap()).line, 10);
    assert_eq!((opts[1].0.as_str(), opts[1].1.s.as_str()), ("c", "%(a)s"));
    for (text, line, what) in [
        ("a = 1\n", 1, "before the first [section]"),
        ("[s]\na = 1\nA = 2\n", 3, "written twice"),
        ("[s]\n[t]\n[s]\n", 3, "written twice"),
        ("[s]\njust words\n", 2, "neither an option"),
        ("[s]\n= 3\n", 2, "without a name"),
    ] {
        let e = parse_ini(text, &f).unwrap_err();
        assert_eq!(e.0, line, "{text:?}: {e:?}");
        assert!(e.1.contains(what), "{text:?}: {e:?}");
    }
}

#[test]
fn interpolation_follows_configparser_and_fail2ban() {
    let s = store(
        &[
            (
                "jail.conf",
                "[DEFAULT]\nport = 0:65535\nlog = /var/log/%(svc)s.log\nsvc = syslog\nfilter = %(__name__)s[mode=%(mode)s]\nmode = normal\n[sshd]\nport = ssh\n[loop]\na = %(b)s\nb = %(a)s\n[bad]\nx = 50%\ny = %(nosuch)s\n[pct]\nx = 50%% of %(port)s\n",
            ),
            (
                "jail.local",
                "[sshd]\nport = %(known/port)s,2222\nsvc = auth\nmode = aggressive\nother = %(default/port)s %(sshd/svc)s\n",
            ),
        ],
        "jail",
    );
    assert_eq!(get(&s, "sshd", "port").unwrap().unwrap(), "ssh,2222");
    assert_eq!(
        get(&s, "sshd", "log").unwrap().unwrap(),
        "/var/log/auth.log",
        "a DEFAULT value sees the section's"
    );
    assert_eq!(get(&s, "sshd", "filter").unwrap().unwrap(), "sshd[mode=aggressive]");
    assert_eq!(get(&s, "sshd", "other").unwrap().unwrap(), "0:65535 auth");
    assert_eq!(get(&s, "pct", "x").unwrap().unwrap(), "50% of 0:65535");
    assert!(get(&s, "loop", "a").unwrap_err().contains("more than 10 deep"));
    assert!(get(&s, "bad", "x").unwrap_err().contains("'%' must be followed"));
    assert!(get(&s, "bad", "y").unwrap_err().contains("%(nosuch)s is not defined"));
    assert_eq!(get(&s, "sshd", "nosuch").unwrap(), None);
    assert_eq!(get(&s, "nosection", "port").unwrap(), None);
    // Where the winning value was written.
    assert_eq!(
        s.raw("sshd", "port", &Vars::new()).unwrap().pos_at(0),
        Pos {
            file: Rc::from("jail.local"),
            line: 2
        }
    );
}

#[test]
fn includes_before_after_and_local_files_in_fail2ban_order() {
    let s = store(
        &[
            (
                "jail.conf",
                "[INCLUDES]\nbefore = paths.conf\nafter = late.conf\n[DEFAULT]\nx = jail\n",
            ),
            ("paths.conf", "[INCLUDES]\nbefore = common.conf\n[DEFAULT]\nx = paths\ny = paths\n"),
            (
                "common.conf",
                "[INCLUDES]\nbefore = paths.conf\n[DEFAULT]\ny = common\nz = common\n",
            ),
            ("paths.local", "[DEFAULT]\nz = paths.local\n"),
            ("late.conf", "[DEFAULT]\nw = late\n"),
            ("jail.d/b.conf", "[DEFAULT]\nw = b\n"),
            ("jail.d/a.local", "[DEFAULT]\nv = a\n"),
            ("jail.local", "[DEFAULT]\nv = local\n"),
        ],
        "jail",
    );
    assert_eq!(
        s.files,
        [
            "common.conf",
            "paths.conf",
            "paths.local",
            "jail.conf",
            "late.conf",
            "jail.d/b.conf",
            "jail.local",
            "jail.d/a.local"
        ]
    );
    let d = |k: &str| s.defaults[k].s.clone();
    assert_eq!(
        (d("x"), d("y"), d("z"), d("w"), d("v")),
        ("jail".into(), "paths".into(), "paths.local".into(), "b".into(), "a".into())
    );
}

#[test]
fn filter_tags_resolve_inside_out_with_arguments_and_init() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("jail.conf", "[j]\nenabled = true\nfilter = f[mode=more]\n"),
            (
                "filter.d/common.conf",
                "[DEFAULT]\n_daemon = \\S*\n__prefix_line = <lt_<logtype>/__prefix_line>\n[lt_file]\n__prefix_line = \\s*\\S+ <_daemon>: \n",
            ),
            (
                "filter.d/f.conf",
                "[INCLUDES]\nbefore = common.conf\n[Definition]\n_daemon = food\nfailregex = ^%(__prefix_line)s<mdre-<mode>> <HOST>$\nmdre-normal = normal\nmdre-more = more <extra>\nmode = normal\nloop = <loop>\n[Init]\nextra = from-init\n",
            ),
        ],
    );
    let mut imp = Importer {
        reader: Reader::new(dir.path()),
        jails: Reader::new(dir.path()).read("jail").unwrap().unwrap(),
        notes: Vec::new(),
    };
    let ctx = imp.open_filter("j", "f", &[("mode".into(), "more".into())], "auto").unwrap();
    let fr = ctx.opt("failregex").unwrap().unwrap();
    assert_eq!(fr.s, format!("^{PREFIX_MARK}more from-init <HOST>$"));
    // The mark remembers where %(__prefix_line)s was written.
    assert_eq!(
        fr.pos_at(1),
        Pos {
            file: Rc::from("filter.d/f.conf"),
            line: 5
        }
    );
    assert_eq!(ctx.opt("_daemon").unwrap().unwrap().s, "food");
    assert_eq!(ctx.opt("known/extra").unwrap().unwrap().s, "from-init");
    assert!(ctx.opt("loop").unwrap_err().contains("refers to itself"));
}

#[test]
fn python_syntax_is_translated() {
    for (py, want) in [
        (r"^foo\d{,3} [^[]*\[<HOST>\]\Z", r"foo\d{0,3} [^\[]*\[<HOST>\]$"),
        (
            r"^x (?P<name>a|b)(?#comment) {DATE} \{1\} <HOST>",
            r"x (?:a|b) \{DATE\} \{1\} \[?<HOST>\]?",
        ),
        (r"^SASL ((?i)login|plain) from <HOST>", r"SASL (?i:login|plain) from \[?<HOST>\]?"),
        (r"^a\<b\> \/ \x41\101 \t <HOST>", r"a<b> / AA \t \[?<HOST>\]?"),
        (
            r"^(?x) a b # comment
             c <HOST>",
            r"abc\[?<HOST>\]?",
        ),
        (r"^<USER> <F-USER>[^\s,)>]*</F-USER> <HOST>", r"[<]USER> <USER> \[?<HOST>\]?"),
        (
            r"^u=<F-USER>\S+</F-USER> <F-ALT_USER>\S*</F-ALT_USER> <IP4> <F-PORT/>",
            r"u=(?:\S+) (?:\S*) (?:::f{4,6}:)?<IP4> \w+",
        ),
        (r"^[\w\-.]+ [a-z-] []x] [\d\]] <IP6>", r"[\w\-.]+ [a-z\-] [\]x] [\d\]] <IP6>"),
    ] {
        let (rules, ignores) = convert(py).unwrap_or_else(|e| panic!("{py}: {e}"));
        assert_eq!((rules.as_slice(), ignores.len()), ([want.to_string()].as_slice(), 0), "{py}");
        check_rule(want, false).unwrap_or_else(|e| panic!("{want}: {e}"));
    }
    // Unanchored: fail2ban searches it.
    assert_eq!(convert(r"failed for <HOST>").unwrap().0, [r".*failed for \[?<HOST>\]?"]);
}

#[test]
fn look_arounds_become_ignore_rules_or_are_refused() {
    // A negative look-ahead: the rule without it, and an ignore rule.
    let (r, i) = convert(r"^\[<HOST>\]: SASL \S+ authentication failed:(?! Connection lost| Invalid mech)").unwrap();
    assert_eq!(r, [r"\[<HOST>\]: SASL \S+ authentication failed:"]);
    assert_eq!(
        i,
        [r"\[<HOST>\]: SASL \S+ authentication failed:(?: Connection lost| Invalid mech)"]
    );
    assert_eq!(
        convert(r"^(?P<c>x)?(?(c)y|z) <HOST>").unwrap().0,
        [r"xy \[?<HOST>\]?", r"z \[?<HOST>\]?"]
    );
    // Conditionals expand into one rule per case; a tempered token becomes `.*` and ignore
    // rules for the lines where its text is inside it.
    let (r, i) = convert(r"^F for (?P<inv>invalid )?(?(inv)(?:(?! from ).)*?|\S+) from <HOST>").unwrap();
    assert_eq!(r, [r"F for invalid .* from \[?<HOST>\]?", r"F for \S+ from \[?<HOST>\]?"]);
    assert_eq!(i, [r"F for invalid .* from .* from ", r"F for invalid .* from from "]);
    let (r, i) = convert(r"^x <HOST>(?:(?:(?! from ).)*)$").unwrap();
    assert_eq!(
        (r.as_slice(), i.as_slice()),
        (
            [r"x \[?<HOST>\]?.*$".to_string()].as_slice(),
            [r"x \[?<HOST>\]?.* from ".to_string()].as_slice()
        )
    );
    // sshd's method that is no failure when it is `publickey`: any other word.
    let (r, _) = convert(r"^Failed (?:<F-NOFAIL>ab</F-NOFAIL>|\S+) for <HOST>").unwrap();
    assert_eq!(r, [r"Failed (?:[\S&&[^a]]\S*|a[\S&&[^b]]\S*|a|ab\S+) for \[?<HOST>\]?"]);
    let m = regex_automata::meta::Regex::new(&format!("^{}$", r[0].replace(r"\[?<HOST>\]?", "H"))).unwrap();
    for (line, yes) in [
        ("Failed ab for H", false),
        ("Failed a for H", true),
        ("Failed abc for H", true),
        ("Failed b for H", true),
        ("Failed xb for H", true),
    ] {
        assert_eq!(m.is_match(line), yes, "{line}");
    }
    // A positive one at the end is plain text.
    assert_eq!(convert(r"^from <HOST>(?= port)").unwrap().0, [r"from \[?<HOST>\]? port"]);
    // One in an alternative of the rule splits the rule.
    let (r, i) = convert(r"^(?:lost after(?! DATA) [A-Z]+|timeout after \S+) from \[<HOST>\]").unwrap();
    assert_eq!(r, [r"lost after [A-Z]+ from \[<HOST>\]", r"timeout after \S+ from \[<HOST>\]"]);
    assert_eq!(i, [r"lost after DATA"]);
    // What cannot be done is refused, at the construct's offset.
    let refused = [
        (r"^(?<!x)a <HOST>", "look-behind", 1),
        (r"^a(?=b) <HOST>", "positive look-ahead", 2),
        (r"^(?:(?! from ).)* <HOST>", "tempered token", 4),
        (r"^a(?:x(?!y))+ <HOST>", "inside a group or repetition", 6),
        (r"^(a)\1 <HOST>", "backreference", 4),
        (r"^(?P<a>x)(?P=a) <HOST>", "backreference (?P=a)", 9),
        (r"^(x)?(?(1)y|z) <HOST>", "group number 1", 5),
        (r"^(?:(?P<c>x))*(?(c)y|z) <HOST>", "is repeated", 14),
        (r"^a++ <HOST>", "possessive", 2),
        (r"^(?>a) <HOST>", "atomic", 1),
        (r"^from <DNS>", "never resolves", 6),
        (r"^from <SUBNET>", "not a network", 6),
        (r"^a<SKIPLINES>b <HOST>", "one line at a time", 2),
    ];
    for (re, what, at) in refused {
        let e = convert(re).unwrap_err();
        assert!(e.contains(what), "{re}: {e}");
        assert!(e.ends_with(&format!("@{at}")) || !e.contains('@'), "{re}: {e}");
    }
    for (re, what) in [
        (r"^a(b <HOST>", "missing )"),
        (r"^a\q", "bad escape"),
        (r"^*a", "nothing to repeat"),
        (r"^a{3,2}", "min repeat"),
        (r"^<F-USER>a", "not closed"),
    ] {
        assert!(convert(re).unwrap_err().contains(what), "{re}");
    }
}

#[test]
fn prefregex_content_and_programs() {
    let mut node = parse_regex(&format!("^{PREFIX_MARK}(?:\\w+: )?warning: <F-CONTENT>.+</F-CONTENT>$")).unwrap();
    rebase(&mut node, 0);
    let p = split_prefregex(node).unwrap();
    assert!(p.mark && p.anchored);
    assert!(
        split_prefregex(parse_regex("^a<F-CONTENT>\\S+</F-CONTENT>").unwrap())
            .unwrap_err()
            .contains("not `.+`")
    );
    assert!(
        split_prefregex(parse_regex("^a b").unwrap())
            .unwrap_err()
            .contains("no <F-CONTENT>")
    );
    let g = |re: &str| globs(&parse_regex(re).unwrap());
    assert_eq!(g(r"postfix(-\w+)?/\w+(?:/smtp[ds])?").unwrap().len(), 6);
    assert_eq!(g(r"(?:dovecot(?:-auth)?|auth)").unwrap(), ["auth", "dovecot", "dovecot-auth"]);
    assert_eq!(g(r"\S*").unwrap(), ["*"]);
    assert!(glob_covers("postfix/*", "postfix/*/smtpd") && !glob_covers("postfix/*/smtpd", "postfix/*"));
}

#[test]
fn fail2ban_times_and_options() {
    for (t, s) in [
        ("600", 600.0),
        ("10m", 600.0),
        ("1h 30m", 5400.0),
        ("1d12h", 129_600.0),
        ("2w", 1_209_600.0),
        ("-1", -1.0),
        ("1year-6mo", 15_778_800.0),
    ] {
        assert_eq!(seconds(t).unwrap(), s, "{t}");
    }
    assert!(seconds("soon").is_err() && seconds("").is_err() && seconds("1 fortnight").is_err());
    assert_eq!(dur_text(600), "10m");
    assert_eq!(dur_text(86_400 * 7), "1w");
    assert_eq!(dur_text(90), "90s");
    assert_eq!(
        extract_options("postfix[mode=auth, x=\"a, b\", y='c]']").unwrap(),
        (
            "postfix".into(),
            vec![
                ("mode".into(), "auth".into()),
                ("x".into(), "a, b".into()),
                ("y".into(), "c]".into())
            ]
        )
    );
    assert_eq!(extract_options("sshd").unwrap(), ("sshd".into(), vec![]));
    assert!(extract_options("sshd[mode").is_err() && extract_options("[x=1]").is_err() && extract_options("f[=1]").is_err());
    assert_eq!(ignore_entry("10.0.0.0/255.255.0.0").unwrap(), "10.0.0.0/16");
    assert_eq!(ignore_entry("file:/etc/allow").unwrap(), "@/etc/allow");
    assert!(ignore_entry("10.0.0.0/255.0.255.0").is_err() && ignore_entry("a b").is_err() && ignore_entry("1.2.3.4/99").is_err());
    assert_eq!(ron_raw(r#"a"b"#), r##"r#"a"b"#"##);
    assert_eq!(ron_raw("a\"#b"), "r##\"a\"#b\"##");
}

/// A small configuration: a custom filter with what the converter must handle.
fn custom() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "jail.conf",
            "[DEFAULT]\nbantime = 10m\nfindtime = 10m\nmaxretry = 5\nport = 0:65535\nfilter = %(__name__)s[mode=%(mode)s]\nmode = normal\n[app]\nenabled = false\nport = http,https\n[off]\nport = 1\n",
        ),
        (
            "filter.d/common.conf",
            "[DEFAULT]\n_daemon = \\S*\n__prefix_line = \\s*(?:\\S+\\s+)?(?:<_daemon>(?:\\[\\d+\\])?:\\s+)?\n",
        ),
        (
            "filter.d/app.conf",
            "[INCLUDES]\nbefore = common.conf\n[Definition]\n_daemon = app\nfailregex = ^%(__prefix_line)slogin failed for <F-USER>\\S+</F-USER> from <HOST>(?! \\(trusted\\))\n            ^%(__prefix_line)s(?<=x)never <HOST>\n            ^%(__prefix_line)sbad token from <ADDR>\nignoreregex = ^%(__prefix_line)slogin failed for admin\n",
        ),
        ("jail.local", "[app]\nenabled = true\nmaxretry = 3\nignoreip = 198.51.100.7\n"),
    ]
}

fn import(files: &[(&str, &str)]) -> Result<Import, ImportError> {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), files);
    fail2ban(dir.path())
}

#[test]
fn a_custom_filter_is_converted_and_what_is_not_is_reported_at_its_line() {
    let imp = import(&custom()).unwrap();
    let cfg = Config::from_text("x.ron", &imp.pipeline, Path::new("/nonexistent")).unwrap();
    let app = &cfg.jails[0];
    assert_eq!(
        (app.name.as_str(), app.maxretry, app.programs.as_slice()),
        ("app", 3, ["app".to_string(), String::new()].as_slice()),
        "{}",
        imp.pipeline
    );
    assert_eq!(app.rules.len(), 2, "{}", imp.pipeline);
    assert!(
        app.rules[0].ends_with(r"login failed for (?:\S+) from \[?<HOST>\]?"),
        "{:?}",
        app.rules
    );
    assert_eq!(app.ignore.len(), 2, "{:?}", app.ignore);
    assert!(
        app.ignore.iter().any(|i| i.ends_with(r"\[?<HOST>\]? \(trusted\)")),
        "{:?}",
        app.ignore
    );
    assert_eq!(app.ports, Some(vec![PortSpec::Name("http".into()), PortSpec::Name("https".into())]));
    assert!(cfg.policy.ignore.contains(&"198.51.100.7".to_string()));
    let at = |file: &str, line: usize, what: &str| {
        assert!(
            imp.notes
                .iter()
                .any(|n| n.file == file && n.line == line && n.message.contains(what)),
            "{file}:{line} {what}: {:#?}",
            imp.notes
        );
    };
    at("filter.d/app.conf", 5, "ignore rule");
    at("filter.d/app.conf", 6, "look-behind");
    at("jail.local", 4, "ignoreip 198.51.100.7");
    // The notes head the file.
    assert!(
        imp.pipeline
            .contains("//   filter.d/app.conf:6: [app] failregex (or one case of it) left out: a look-behind"),
        "{}",
        imp.pipeline
    );
    // The disabled jail is not there.
    assert_eq!(cfg.jails.len(), 1);
}

#[test]
fn a_jail_extends_its_filter_with_known_values() {
    let mut files = custom();
    files.push((
        "jail.d/app2.local",
        "[app2]\nenabled = true\nfilter = app\nport = 8080\nfailregex = %(known/failregex)s\n            ^extra from <HOST>$\n",
    ));
    let imp = import(&files).unwrap();
    let cfg = Config::from_text("x.ron", &imp.pipeline, Path::new("/nonexistent")).unwrap();
    let app2 = cfg
        .jails
        .iter()
        .find(|j| j.name == "app2")
        .unwrap_or_else(|| panic!("{}", imp.pipeline));
    // Its own line-anchored rule would read every sshd message: left out, said where.
    assert_eq!(app2.rules.len(), 2, "{:?}", app2.rules);
    assert!(app2.rules[0].contains("login failed for"), "{:?}", app2.rules);
    assert!(
        imp.notes
            .iter()
            .any(|n| n.file == "jail.d/app2.local" && n.line == 6 && n.message.contains("without a syslog header")),
        "{:#?}",
        imp.notes
    );
    assert!(
        imp.notes
            .iter()
            .any(|n| n.file == "filter.d/app.conf" && n.line == 6 && n.message.starts_with("[app2]")),
        "{:#?}",
        imp.notes
    );
}

#[test]
fn an_ignoreregex_that_cannot_be_converted_refuses_the_jail() {
    let mut files = custom();
    files.push(("filter.d/app.local", "[Definition]\nignoreregex = ^%(__prefix_line)sx(?<=y)\n"));
    let imp = import(&files).unwrap();
    assert!(!imp.pipeline.contains("Jail("), "{}", imp.pipeline);
    assert!(
        imp.notes
            .iter()
            .any(|n| n.file == "filter.d/app.local" && n.line == 2 && n.message.contains("without it the jail would count")),
        "{:#?}",
        imp.notes
    );
}

#[test]
fn errors_are_located() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(fail2ban(dir.path()), Err(ImportError::NotFound { .. })));
    let mut files = custom();
    files.push(("jail.d/x.local", "[app]\nenabled = true\nenabled = false\n"));
    let e = import(&files).unwrap_err();
    assert_eq!(
        e.to_string(),
        "jail.d/x.local:3: option \"enabled\" written twice in [app] of this file (fail2ban refuses that)"
    );
    // A filter fail2ban cannot read skips its jail, located.
    let mut files = custom();
    files.push(("filter.d/app.local", "[Definition\n"));
    let imp = import(&files).unwrap();
    assert!(
        imp.notes.iter().any(|n| n.file == "filter.d/app.local" && n.line == 1),
        "{:#?}",
        imp.notes
    );
    // Bad numbers skip the jail, at the option's line.
    let mut files = custom();
    files.push(("jail.d/n.local", "[app]\nmaxretry = many\n"));
    let imp = import(&files).unwrap();
    assert!(
        imp.notes
            .iter()
            .any(|n| n.file == "jail.d/n.local" && n.line == 2 && n.message.contains("not a number")),
        "{:#?}",
        imp.notes
    );
}

/// A tiny deterministic generator (no dependency): xorshift.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Malformed configurations, made by hand-picked and random edits of a valid one: an error
/// or notes, never a panic, and what is written always loads.
#[test]
fn malformed_files_never_panic() {
    let base = custom();
    let specials = [
        "%(",
        "%",
        "<",
        "<F-USER>",
        "</F-USER>",
        "[",
        "]",
        "(",
        ")",
        "(?",
        "\\",
        "\n",
        "\n ",
        "=",
        ":",
        ";",
        "#",
        "{",
        "}",
        "(?!",
        "(?<=",
        "?",
        "*",
        "+",
        "|",
        "<HOST>",
        "%(__prefix_line)s",
        "<F-CONTENT>",
        "\u{e000}",
        "é",
        "\u{0}",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let dir = tempfile::tempdir().unwrap();
    for round in 0..300 {
        let mut files: Vec<(String, String)> = base.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        files.push((
            "filter.d/app.local".into(),
            "[Definition]\nprefregex = ^%(__prefix_line)s(?:x: )?<F-CONTENT>.+</F-CONTENT>$\n".into(),
        ));
        for _ in 0..1 + rng.below(3) {
            let k = rng.below(files.len());
            let text = &mut files[k].1;
            let chars: Vec<char> = text.chars().collect();
            let at = rng.below(chars.len() + 1);
            let edited: String = match rng.below(3) {
                0 => chars[..at].iter().collect(),
                1 => {
                    let mut s: String = chars[..at].iter().collect();
                    s.push_str(specials[rng.below(specials.len())]);
                    s.extend(&chars[at..]);
                    s
                }
                _ => {
                    let end = (at + 1 + rng.below(8)).min(chars.len());
                    chars[..at].iter().chain(&chars[end..]).collect()
                }
            };
            *text = edited;
        }
        let d = dir.path().join(round.to_string());
        for (n, t) in &files {
            let p = d.join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        }
        match fail2ban(&d) {
            Ok(imp) => {
                Config::from_text("x.ron", &imp.pipeline, Path::new("/nonexistent"))
                    .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", imp.pipeline));
            }
            Err(ImportError::Output(e)) => panic!("round {round}: {e}"),
            Err(_) => {}
        }
    }
    // Deep nesting is an error, not a stack overflow.
    let deep = format!("{}a{}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(parse_regex(&deep).unwrap_err().1.contains("nested"));
    // Regexes alone: random text from the special pieces.
    for _ in 0..3000 {
        let n = rng.below(8);
        let re: String = (0..n)
            .map(|_| {
                if rng.below(3) == 0 {
                    "a"
                } else {
                    specials[rng.below(specials.len())]
                }
            })
            .collect();
        if let Ok(node) = parse_regex(&re) {
            let _ = globs(&node);
            if let Ok(composed) = compose(None, node, &mut Vec::new()) {
                for l in lower(
                    composed,
                    LowerMode {
                        failure: true,
                        mlfid: true,
                    },
                    &mut 32,
                )
                .into_iter()
                .flatten()
                {
                    if let Ok(t) = emit_all(&concat(l.rule), false) {
                        let _ = check_rule(&t, false);
                    }
                }
            }
        }
    }
}
