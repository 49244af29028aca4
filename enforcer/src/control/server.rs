//! The agent's side of the control socket: bind it safely, accept
//! connections, check the peer, read one request, answer it.
//!
//! What a request does is the agent's business ([`Handler`]); this module
//! owns the socket file, the framing, the access check and the events
//! stream.

use std::{
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{
    MAX_REQUEST_BYTES, Reply, Request,
    peer::{self, Access, PeerCreds},
};
use crate::events::EventsHub;

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An error setting up the socket. Each names the path.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("control socket {path}: {detail}")]
    Socket { path: PathBuf, detail: String },
}

/// What the agent does with a request that passed the access check.
pub trait Handler: Send + Sync + 'static {
    /// Answers every verb but `events`.
    fn handle(
        &self,
        peer: &PeerCreds,
        request: Request,
    ) -> impl std::future::Future<Output = Reply> + Send;
    /// Where `events` reads from.
    fn events(&self) -> &EventsHub;
    /// Counts a request by verb and result (`ok`, `error`, `denied`).
    fn count(&self, verb: &'static str, result: &'static str);
}

/// The bound socket. Dropping it removes the socket file, if it is still
/// the one this agent bound.
pub struct ControlSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    ino: u64,
    access: Access,
}

impl std::fmt::Debug for ControlSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSocket")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Binds the socket at `path` (creating its directory, mode 0755, when
/// missing), mode 0660, owned by root and the admin group. A socket file
/// left by a dead agent is replaced; one a live agent answers on is an
/// error (two agents must not share a socket).
pub fn bind(path: &Path, access: Access) -> Result<ControlSocket, ServerError> {
    let err = |detail: String| ServerError::Socket {
        path: path.to_owned(),
        detail,
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| err(format!("setting the mode of {}: {e}", dir.display())))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(
                    "another agent is listening on it; one agent per socket (set control.socket)"
                        .into(),
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| err(format!("removing the stale socket: {e}")))?;
        }
        Ok(_) => {
            return Err(err(
                "exists and is not a socket; refusing to replace it".into()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(format!("cannot look at it: {e}"))),
    }
    // Bound with the process umask (the agent's is 022 at most under
    // systemd), so until the chmod below the socket is at most 0755: no
    // one but root can connect (connecting needs write permission).
    let listener =
        std::os::unix::net::UnixListener::bind(path).map_err(|e| err(format!("binding: {e}")))?;
    let setup = || -> Result<u64, String> {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(0)),
            Some(access.socket_gid()),
        )
        .map_err(|e| format!("chown to root:{}: {e}", access.socket_gid()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| format!("chmod 0660: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("non-blocking: {e}"))?;
        Ok(std::fs::metadata(path).map_err(|e| e.to_string())?.ino())
    };
    match setup() {
        Ok(ino) => Ok(ControlSocket {
            listener,
            path: path.to_owned(),
            ino,
            access,
        }),
        Err(detail) => {
            let _ = std::fs::remove_file(path);
            Err(err(detail))
        }
    }
}

impl ControlSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Accepts connections until `stop` resolves; each is served on its own
/// task. The socket file is removed when this returns.
pub async fn serve<H: Handler>(
    socket: ControlSocket,
    handler: Arc<H>,
    stop: impl std::future::Future<Output = ()>,
) {
    let listener = match socket.listener.try_clone().and_then(UnixListener::from_std) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(socket = %socket.path.display(), error = %e, "cannot serve the control socket");
            return;
        }
    };
    let access = Arc::new(socket.access.clone());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let handler = Arc::clone(&handler);
                    let access = Arc::clone(&access);
                    tokio::spawn(async move { connection(stream, &access, &*handler).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the control socket");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(socket);
}

async fn write_line(stream: &mut (impl AsyncWrite + Unpin), line: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    stream.write_all(&buf).await
}

async fn reply(stream: &mut (impl AsyncWrite + Unpin), r: &Reply) {
    let line = serde_json::to_string(r)
        .unwrap_or_else(|e| format!(r#"{{"ok":false,"error":"reply does not serialise: {e}"}}"#));
    if let Err(e) = write_line(stream, &line).await {
        tracing::debug!(error = %e, "control client went away before the reply");
    }
}

async fn connection<H: Handler>(stream: UnixStream, access: &Access, handler: &H) {
    let peer = match peer::creds(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a control client's credentials; closing");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut limited = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut line)).await;
    let request = match read {
        Err(_) => Err(format!("no request within {}s", REQUEST_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("reading the request: {e}")),
        Ok(Ok(_)) => Request::parse(&line).map_err(|e| e.to_string()),
    };
    // The access check comes first: a peer that may not ask learns
    // nothing, not even whether its request parsed.
    if let Err(why) = access.check(&peer) {
        let verb = request.as_ref().map(Request::verb).unwrap_or("invalid");
        tracing::warn!(uid = peer.uid, pid = ?peer.pid, verb, "control request refused: {why}");
        handler.count(verb, "denied");
        reply(&mut write, &Reply::error(why)).await;
        return;
    }
    let request = match request {
        Ok(r) => r,
        Err(why) => {
            handler.count("invalid", "error");
            reply(&mut write, &Reply::error(why)).await;
            return;
        }
    };
    let verb = request.verb();
    if let Request::Events { follow } = request {
        handler.count(verb, "ok");
        stream_events(&mut write, handler.events(), follow).await;
        return;
    }
    let r = handler.handle(&peer, request).await;
    handler.count(verb, if r.ok { "ok" } else { "error" });
    reply(&mut write, &r).await;
}

/// The recent events, then (following) each new one as it comes, until the
/// client goes away. A client too slow for the event rate gets a
/// `{"lagged":N}` line saying how many it missed; the events file, not
/// this stream, is the complete record.
async fn stream_events(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    hub: &EventsHub,
    follow: bool,
) {
    let (recent, mut rx) = hub.subscribe();
    reply(
        write,
        &Reply::ok(serde_json::json!({ "recent": recent.len(), "follow": follow })),
    )
    .await;
    for line in recent {
        if write_line(write, &line).await.is_err() {
            return;
        }
    }
    if !follow {
        return;
    }
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Ok(line) => {
                    if write_line(write, &line).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    if write_line(write, &format!(r#"{{"lagged":{n}}}"#)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            // Nothing to read from a following client: readable means it
            // closed (or sent junk); either way the stream ends.
            _ = write.as_ref().readable() => {
                let mut b = [0u8; 1];
                match write.as_ref().try_read(&mut b) {
                    Ok(_) => return,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    }
}
