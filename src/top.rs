//! `mailpipe top`: a live view of a running daemon over its control socket, the way `htop`
//! shows processes: lines/s and failures/s per jail, the bans (newest first, one selectable),
//! the addresses failing most and the accounts most failed on, the fleet link. Redrawn once a
//! second by ratatui, which writes only the cells that changed (no flicker); `↑`/`↓` select a
//! ban, `u` lifts it, `q` quits.

use std::path::Path;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};
use serde_json::Value;

use crate::control::{Request, request};

/// What the screen shows, from the last two answers of the daemon.
#[derive(Default)]
struct View {
    /// The last status, and when it came.
    status: Option<(Instant, Value)>,
    /// Lines per second overall, failures per second per jail (from the last two statuses).
    lines_per_s: f64,
    failures_per_s: Vec<f64>,
    /// Active bans, newest first.
    bans: Vec<Value>,
    selected: TableState,
    /// The answer to the last key, or why the daemon is out of reach.
    message: String,
}

impl View {
    /// Asks the daemon again.
    fn refresh(&mut self, socket: &Path) {
        let now = Instant::now();
        let status = match request(socket, &Request::Status) {
            Ok(v) => v,
            Err(e) => {
                self.message = format!("{}: {e}", socket.display());
                return;
            }
        };
        if let Some((then, old)) = &self.status {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            let n = |v: &Value| v.as_f64().unwrap_or(0.0);
            self.lines_per_s = (n(&status["lines"]) - n(&old["lines"])) / secs;
            let jails = |v: &Value| v["jails"].as_array().cloned().unwrap_or_default();
            self.failures_per_s = jails(&status)
                .iter()
                .map(|j| {
                    let before = jails(old)
                        .iter()
                        .find(|o| o["name"] == j["name"])
                        .map_or(0.0, |o| n(&o["failures"]));
                    (n(&j["failures"]) - before) / secs
                })
                .collect();
        }
        self.status = Some((now, status));
        if let Ok(v) = request(socket, &Request::List { jail: None }) {
            let mut bans = v["bans"].as_array().cloned().unwrap_or_default();
            bans.sort_by(|a, b| b["since"].as_str().cmp(&a["since"].as_str()));
            self.bans = bans;
        }
        if self.selected.selected().is_none_or(|i| i >= self.bans.len()) {
            self.selected.select((!self.bans.is_empty()).then_some(0));
        }
    }

    /// Lifts the selected ban.
    fn unban(&mut self, socket: &Path) {
        let Some(ip) = self
            .selected
            .selected()
            .and_then(|i| self.bans.get(i))
            .and_then(|b| b["ip"].as_str())
            .and_then(|ip| ip.parse().ok())
        else {
            return;
        };
        self.message = match request(socket, &Request::Unban { ip: Some(ip), all: false }) {
            Ok(v) if v["ok"] == true => format!("unbanned {ip}"),
            Ok(v) => format!("{ip}: {}", v["error"].as_str().unwrap_or("refused")),
            Err(e) => format!("{ip}: {e}"),
        };
        self.refresh(socket);
    }

    fn draw(&mut self, f: &mut ratatui::Frame) {
        let [head, jails, bans, lists, foot] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Min(4),
            Constraint::Min(6),
            Constraint::Length(7),
            Constraint::Length(1),
        ])
        .areas(f.area());
        let st = self.status.as_ref().map(|(_, v)| v.clone()).unwrap_or(Value::Null);
        let fleet = match st["fleet"].as_object() {
            Some(fl) if fl.get("connected") == Some(&Value::Bool(true)) => format!(
                "   fleet: connected, in {} out {}, lag {} ms",
                st["fleet"]["events_in"], st["fleet"]["events_out"], st["fleet"]["lag_ms"]
            ),
            Some(_) => format!("   fleet: NOT connected, {} waiting", st["fleet"]["waiting"]),
            None => String::new(),
        };
        f.render_widget(
            Paragraph::new(vec![
                Line::from(format!(
                    "mailpipe top   {:.0} lines/s   {} lines   {} bans ({} active)   up {} s{fleet}",
                    self.lines_per_s, st["lines"], st["bans"], st["currently_banned"], st["uptime_s"]
                )),
                Line::from(format!("   {} addresses counting failures", st["tracked"])),
            ]),
            head,
        );
        let rows = st["jails"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, j)| {
                Row::new(vec![
                    Cell::from(j["name"].as_str().unwrap_or("").to_string()),
                    Cell::from(format!("{:.1}", self.failures_per_s.get(i).copied().unwrap_or(0.0))),
                    Cell::from(j["currently_failing"].to_string()),
                    Cell::from(j["currently_banned"].to_string()),
                    Cell::from(j["total_banned"].to_string()),
                ])
            });
        let cols = [
            ("jail", 24),
            ("failures/s", 12),
            ("failing", 10),
            ("banned", 10),
            ("total bans", 12),
        ];
        f.render_widget(table(rows, &cols, " jails "), jails);
        let rows = self.bans.iter().map(|b| {
            Row::new(vec![
                Cell::from(format!("{}/{}", b["ip"].as_str().unwrap_or(""), b["prefix"])),
                Cell::from(b["jail"].as_str().unwrap_or("").to_string()),
                Cell::from(b["reason"].as_str().unwrap_or("").to_string()),
                Cell::from(b["offence"].to_string()),
                Cell::from(format!("{} s", b["left_s"])),
            ])
        });
        let cols = [("banned", 28), ("jail", 22), ("reason", 10), ("offence", 8), ("left", 12)];
        f.render_stateful_widget(
            table(rows, &cols, " bans, newest first ").row_highlight_style(Style::new().add_modifier(Modifier::REVERSED)),
            bans,
            &mut self.selected,
        );
        let [left, right] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(lists);
        let list = |v: &Value, key: &str| -> Vec<Line> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|a| Line::from(format!("{:>6}  {}", a["failures"], a[key].as_str().unwrap_or(""))))
                .collect()
        };
        f.render_widget(
            Paragraph::new(list(&st["attackers"], "ip")).block(Block::bordered().title(" most active attackers ")),
            left,
        );
        f.render_widget(
            Paragraph::new(list(&st["targeted"], "user")).block(Block::bordered().title(" most targeted accounts ")),
            right,
        );
        f.render_widget(Paragraph::new(format!("↑/↓ select   u unban   q quit   {}", self.message)), foot);
    }
}

/// A bordered, titled table of `rows` under bold column names, each `(name, width)`.
fn table<'a>(rows: impl IntoIterator<Item = Row<'a>>, cols: &[(&'a str, u16)], title: &'a str) -> Table<'a> {
    Table::new(rows, cols.iter().map(|&(_, w)| Constraint::Length(w)))
        .header(Row::new(cols.iter().map(|&(n, _)| n)).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(title))
}

/// Runs the view until `q` (or Esc): refreshes every second, and at once after a key.
pub fn run(socket: &Path) -> std::io::Result<()> {
    let mut view = View::default();
    view.refresh(socket);
    ratatui::run(|terminal| {
        let mut next = Instant::now() + Duration::from_secs(1);
        loop {
            terminal.draw(|f| view.draw(f))?;
            if event::poll(next.saturating_duration_since(Instant::now()))? {
                if let Event::Key(k) = event::read()?
                    && k.kind == KeyEventKind::Press
                {
                    match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Down | KeyCode::Char('j') => view.selected.select_next(),
                        KeyCode::Up | KeyCode::Char('k') => view.selected.select_previous(),
                        KeyCode::Char('u') => view.unban(socket),
                        _ => {}
                    }
                }
                continue;
            }
            view.refresh(socket);
            next = Instant::now() + Duration::from_secs(1);
        }
    })
}
