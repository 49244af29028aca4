//! The terminal while `enforcer top` draws: no line buffering and no echo
//! (so `q` is read at once and not printed), the alternate screen, no
//! cursor; and its restoration on every way out: a normal return, an error,
//! a panic (the panic hook) and a signal (the caller's signal thread ends
//! the loop, and the guard's drop restores).
//!
//! `ISIG` stays on: Ctrl-C still raises SIGINT, which the caller waits for
//! on a thread of its own, so that the terminal is restored before exit
//! instead of being left in the alternate screen by the default action.

use std::{
    io::{self, Write as _},
    os::fd::AsRawFd as _,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

/// The terminal modes before `top` changed them, for every path that
/// restores them (the guard and the panic hook).
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);
/// Whether the terminal is in `top`'s state now (restore once only).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Enter the alternate screen, hide the cursor, clear.
const ENTER: &str = "\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J";
/// Show the cursor, leave the alternate screen.
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";

/// The terminal in `top`'s state; dropping it restores the terminal.
pub struct Guard(());

/// Whether stdout is a terminal `top` can draw on (keys are read from
/// stdin when that is one too; see [`enter`]).
pub fn stdout_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(io::stdout().as_raw_fd()) == 1 }
}

/// Puts the terminal in `top`'s state. The key modes are set on stdin when
/// it is a terminal (else keys are not read and only signals end `top`).
pub fn enter() -> io::Result<Guard> {
    let fd = io::stdin().as_raw_fd();
    // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr,
    // which fills it or fails.
    let mut original: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is this process's stdin; `original` is a valid pointer.
    let is_tty = unsafe { libc::tcgetattr(fd, &mut original) } == 0;
    if is_tty {
        let mut raw = original;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: as above; `raw` is a copy of the modes just read.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(original);
    }
    ACTIVE.store(true, Ordering::SeqCst);
    install_panic_hook();
    let mut out = io::stdout().lock();
    out.write_all(ENTER.as_bytes())?;
    out.flush()?;
    Ok(Guard(()))
}

/// Restores the modes and the screen, once; safe to call from any path.
pub fn restore() {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return;
    }
    if let Some(original) = *SAVED.lock().unwrap_or_else(|e| e.into_inner()) {
        // SAFETY: restores the modes read from this same descriptor.
        unsafe {
            libc::tcsetattr(io::stdin().as_raw_fd(), libc::TCSANOW, &original);
        }
    }
    // Not through the locked stdout: a panic while drawing holds its lock.
    // SAFETY: writes a constant buffer to stdout's descriptor.
    unsafe {
        libc::write(io::stdout().as_raw_fd(), LEAVE.as_ptr().cast(), LEAVE.len());
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

/// A panic restores the terminal before its message is printed, so the
/// message is readable and the shell usable.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// The terminal's size (columns, rows), or 80x24 when it cannot be read.
pub fn size() -> (usize, usize) {
    // SAFETY: a zeroed winsize is a valid out-parameter for TIOCGWINSZ.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize through the pointer.
    let rc = unsafe { libc::ioctl(io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
        (usize::from(ws.ws_col), usize::from(ws.ws_row))
    } else {
        (80, 24)
    }
}

/// Draws a frame over the previous one: each line cleared to its end, then
/// everything below the last line cleared (no full clear: no flicker).
pub fn draw(lines: &[String]) -> io::Result<()> {
    let mut buf = String::from("\x1b[H");
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            buf.push_str("\r\n");
        }
        buf.push_str(line);
        buf.push_str("\x1b[K");
    }
    buf.push_str("\x1b[J");
    let mut out = io::stdout().lock();
    out.write_all(buf.as_bytes())?;
    out.flush()
}
