//! `enforcer top`: one host at a glance, refreshed every second: decisions
//! per destination country and scope (totals and rates), the destinations
//! refused or that would be with the process that tried them, events and
//! their suppression, the mode, the policy generation, coverage and the
//! databases' age. What an operator looks at before switching a host from
//! observe to enforce.
//!
//! Everything comes through the agent's control socket, so `top` needs the
//! socket permission the other verbs need and nothing more (no access to
//! the pinned maps): the `status` answer, polled every interval, carries
//! the kernel counters the agent reads for `/metrics` (the same
//! `CounterReader`, summed per country and scope in `status::decisions`),
//! and the event stream (`events --follow`) names the processes.
//!
//! Drawn with plain ANSI sequences (alternate screen, redraw in place): a
//! frame is a list of text lines, which `--once` prints as they are and a
//! test can read from a terminal capture. A stdout that is not a terminal
//! gets one frame, as with `--once`.

mod model;
mod render;
mod terminal;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::sys::signal::{SigSet, Signal};

use super::control_verbs::SocketArg;
use crate::control::{
    Request,
    client::{self, Connection},
};
use model::{Events, Snapshot};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Print one frame as text and exit (for scripts; rates are over one
    /// interval). Implied when stdout is not a terminal.
    #[arg(long)]
    pub once: bool,
    /// Seconds between refreshes (0.2 to 60).
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if (0.2..=60.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0.2 to 60 seconds"))
    }
}

/// What the reading threads tell the drawing loop.
enum Msg {
    /// A status answer (or why there is none) and when it was asked for.
    Status(Result<serde_json::Value, String>, Instant),
    /// The event stream was opened: the recent events it replays.
    EventsConnected(Vec<String>),
    Event(String),
    EventsDown(String),
    Key(u8),
    Signal(Signal),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let socket = args.socket.resolve();
    let interval = Duration::from_secs_f64(args.interval);
    let live = !args.once && terminal::stdout_is_terminal();
    if !args.once && !live {
        eprintln!("enforcer top: stdout is not a terminal; printing one frame (as --once)");
    }
    // Signals are taken by a thread of their own in the live view (so the
    // terminal is restored before exit): blocked here, before any thread
    // is started, so that every thread inherits the mask.
    let signals = live.then(|| {
        let mut set = SigSet::empty();
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
            Signal::SIGWINCH,
        ] {
            set.add(s);
        }
        set
    });
    if let Some(set) = &signals {
        set.thread_block()?;
    }
    // The first answer before anything is drawn: no agent, or no
    // permission, is an error on stderr, not a screen.
    let first = Instant::now();
    let status = client::call(&socket, &Request::Status {})?;
    let mut app = App::new(args.interval, live);
    app.status(Ok(status), first);
    let (tx, rx) = mpsc::channel();
    if !live {
        // The recent events, read before the second answer, then the new
        // ones for one interval.
        match open_events(&socket) {
            Ok((recent, conn)) => {
                app.apply(Msg::EventsConnected(recent));
                let tx = tx.clone();
                std::thread::spawn(move || follow_events(conn, &tx));
            }
            Err(e) => app.apply(Msg::EventsDown(e)),
        }
        std::thread::sleep(interval);
        let at = Instant::now();
        app.status(
            client::call(&socket, &Request::Status {}).map_err(|e| e.to_string()),
            at,
        );
        while let Ok(m) = rx.try_recv() {
            app.apply(m);
        }
        let mut out = std::io::stdout().lock();
        for line in app.frame(None, None) {
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    spawn_status(socket.clone(), interval, tx.clone());
    spawn_events(socket, interval, tx.clone());
    if let Some(set) = signals {
        let tx = tx.clone();
        std::thread::spawn(move || {
            while let Ok(sig) = set.wait() {
                if tx.send(Msg::Signal(sig)).is_err() {
                    return;
                }
            }
        });
    }
    let _guard = terminal::enter()?;
    spawn_keys(tx);
    app.draw()?;
    while let Ok(m) = rx.recv() {
        match m {
            Msg::Key(b'q' | b'Q') => break,
            Msg::Signal(Signal::SIGWINCH) => app.draw()?,
            Msg::Signal(_) => break,
            m @ Msg::Status(..) => {
                app.apply(m);
                app.draw()?;
            }
            m => app.apply(m),
        }
    }
    Ok(())
}

/// The view's state between frames.
struct App {
    interval: f64,
    live: bool,
    current: Option<Snapshot>,
    previous: Option<Snapshot>,
    events: Events,
    /// Live events counted at the last status answer, and when.
    events_mark: Option<(u64, Instant)>,
    events_rate: Option<f64>,
    status_error: Option<String>,
    refresh: u64,
}

impl App {
    fn new(interval: f64, live: bool) -> App {
        App {
            interval,
            live,
            current: None,
            previous: None,
            events: Events::default(),
            events_mark: None,
            events_rate: None,
            status_error: None,
            refresh: 0,
        }
    }

    fn status(&mut self, answer: Result<serde_json::Value, String>, at: Instant) {
        self.refresh += 1;
        match answer {
            Ok(v) => {
                self.previous = self.current.take();
                self.current = Some(Snapshot::from_status(&v, at));
                self.status_error = None;
                if let Some((n, then)) = self.events_mark {
                    let secs = at.duration_since(then).as_secs_f64();
                    self.events_rate = model::rate(self.events.live, Some(n), secs);
                }
                self.events_mark = Some((self.events.live, at));
            }
            Err(e) => self.status_error = Some(e),
        }
    }

    fn apply(&mut self, m: Msg) {
        let scope = self
            .current
            .as_ref()
            .map(|s| s.scope.clone())
            .unwrap_or_default();
        match m {
            Msg::Status(answer, at) => self.status(answer, at),
            Msg::EventsConnected(recent) => {
                self.events.connected();
                for line in &recent {
                    self.events.line(line, true, &scope);
                }
            }
            Msg::Event(line) => self.events.line(&line, false, &scope),
            Msg::EventsDown(why) => self.events.down = Some(why),
            Msg::Key(_) | Msg::Signal(_) => {}
        }
    }

    fn frame(&self, width: Option<usize>, height: Option<usize>) -> Vec<String> {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        render::frame(
            &render::View {
                current: self.current.as_ref(),
                previous: self.previous.as_ref(),
                events: &self.events,
                events_rate: self.events_rate,
                status_error: self.status_error.as_deref(),
                refresh: self.refresh,
                interval_seconds: self.interval,
                now_rfc3339: now,
                live: self.live,
            },
            width,
            height,
        )
    }

    fn draw(&self) -> std::io::Result<()> {
        let (w, h) = terminal::size();
        terminal::draw(&self.frame(Some(w), Some(h)))
    }
}

/// Asks for the status every interval (measured from each request's
/// start, so the rates' clock is the requests').
fn spawn_status(socket: PathBuf, interval: Duration, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        let mut next = Instant::now() + interval;
        loop {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            let at = Instant::now();
            next = at + interval;
            let answer = client::call(&socket, &Request::Status {}).map_err(|e| e.to_string());
            if tx.send(Msg::Status(answer, at)).is_err() {
                return;
            }
        }
    });
}

/// Opens the event stream: the agent's reply, then the recent events it
/// replays (as many as the reply says).
fn open_events(socket: &Path) -> Result<(Vec<String>, Connection), String> {
    let (reply, mut conn) =
        client::send(socket, &Request::Events { follow: true }).map_err(|e| e.to_string())?;
    if !reply.ok {
        return Err(reply.error.unwrap_or_else(|| "refused".into()));
    }
    let n = reply.result["recent"].as_u64().unwrap_or(0);
    let mut recent = Vec::new();
    for _ in 0..n {
        match conn.next_line().map_err(|e| e.to_string())? {
            Some(line) => recent.push(line),
            None => break,
        }
    }
    conn.no_timeout().map_err(|e| e.to_string())?;
    Ok((recent, conn))
}

/// Forwards the stream's new events until it ends.
fn follow_events(mut conn: Connection, tx: &mpsc::Sender<Msg>) {
    loop {
        let m = match conn.next_line() {
            Ok(Some(line)) => Msg::Event(line),
            Ok(None) => Msg::EventsDown("the agent closed the event stream".into()),
            Err(e) => Msg::EventsDown(e.to_string()),
        };
        let end = matches!(m, Msg::EventsDown(_));
        if tx.send(m).is_err() || end {
            return;
        }
    }
}

/// Keeps the event stream open, opening it again (every interval) when
/// the agent restarts or goes away.
fn spawn_events(socket: PathBuf, interval: Duration, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        loop {
            let sent = match open_events(&socket) {
                Ok((recent, conn)) => {
                    if tx.send(Msg::EventsConnected(recent)).is_err() {
                        return;
                    }
                    follow_events(conn, &tx);
                    true
                }
                Err(e) => tx.send(Msg::EventsDown(e)).is_ok(),
            };
            if !sent {
                return;
            }
            std::thread::sleep(interval);
        }
    });
}

/// Reads keys from stdin (when it is a terminal; a closed stdin ends
/// only this thread).
fn spawn_keys(tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut stdin = std::io::stdin();
        let mut b = [0u8; 1];
        while let Ok(1) = stdin.read(&mut b) {
            if tx.send(Msg::Key(b[0])).is_err() {
                return;
            }
        }
    });
}
