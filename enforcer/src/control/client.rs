//! The CLI's side of the control socket.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::{ControlError, Reply, Request};

/// How long a request may take: a reload of a world-size database takes
/// seconds, so this is generous; `events --follow` has no limit after the
/// reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection with one request sent.
pub struct Connection {
    reader: BufReader<UnixStream>,
    path: std::path::PathBuf,
}

/// Connects, sends `request` and returns the connection, its reply read.
pub fn send(socket: &Path, request: &Request) -> Result<(Reply, Connection), ControlError> {
    let stream = UnixStream::connect(socket).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ControlError::Permission {
                path: socket.to_owned(),
            }
        } else {
            ControlError::Connect {
                path: socket.to_owned(),
                source,
            }
        }
    })?;
    let proto = |detail: String| ControlError::Protocol {
        path: socket.to_owned(),
        detail,
    };
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| proto(format!("setting a timeout: {e}")))?;
    let mut line = serde_json::to_string(request).map_err(|e| proto(e.to_string()))?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| proto(format!("sending the request: {e}")))?;
    let mut conn = Connection {
        reader: BufReader::new(stream),
        path: socket.to_owned(),
    };
    let reply = conn
        .next_line()?
        .ok_or_else(|| proto("the agent closed the connection without a reply".into()))?;
    let reply: Reply =
        serde_json::from_str(&reply).map_err(|e| proto(format!("reply does not parse: {e}")))?;
    Ok((reply, conn))
}

/// Sends one request and returns its result, or the agent's error.
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, ControlError> {
    let (reply, _) = send(socket, request)?;
    if reply.ok {
        Ok(reply.result)
    } else {
        Err(ControlError::Refused(
            reply.error.unwrap_or_else(|| "no reason given".into()),
        ))
    }
}

impl Connection {
    /// The next line the agent sends, None at the end of the stream.
    pub fn next_line(&mut self) -> Result<Option<String>, ControlError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(line.trim_end_matches('\n').to_owned())),
            Err(e) => Err(ControlError::Protocol {
                path: self.path.clone(),
                detail: format!("reading: {e}"),
            }),
        }
    }

    /// No timeout from now on (a followed event stream may be quiet).
    pub fn no_timeout(&mut self) -> Result<(), ControlError> {
        self.reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(|e| ControlError::Protocol {
                path: self.path.clone(),
                detail: format!("clearing the timeout: {e}"),
            })
    }
}
