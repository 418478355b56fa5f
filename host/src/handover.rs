//! The listening sockets one weir process hands to the next, over a Unix
//! socket (`SCM_RIGHTS`), for a hitless binary upgrade.
//!
//! The running process (`upgrade`, above) starts its successor with
//! [`SOCKET_ENV`] naming a Unix socket only it and that child can reach.
//! The child connects ([`Successor::connect`]), receives every listening
//! socket with what it was for ([`Successor::receive`]), opens its listeners
//! on them instead of binding ([`Inherited`]), and answers `ready` or
//! `failed: WHY` ([`Successor::ready`], [`Successor::failed`]). Both
//! processes hold the same kernel sockets meanwhile, so a connection waiting
//! in a backlog is accepted by one of them and none is refused.
//!
//! The wire format is a 4-byte big-endian length and a JSON list of
//! [`Passed`], whose descriptors ride as `SCM_RIGHTS` on the same message,
//! in the same order, at most [`FDS_PER_MESSAGE`] per message; an empty list
//! ends the transfer. Written by hand on `rustix`'s `sendmsg`/`recvmsg`: the
//! protocol is these few lines, and no maintained crate speaks it.

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The environment variable that makes `weir run` a successor: the path of
/// its predecessor's handover socket.
pub const SOCKET_ENV: &str = "WEIR_UPGRADE_SOCKET";

/// Descriptors per message (the kernel takes at most 253 in one).
const FDS_PER_MESSAGE: usize = 64;

/// A message's JSON may not be longer than this.
const MAX_MESSAGE: usize = 1 << 20;

/// What a passed socket was for in the process that passes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passed {
    /// `listener` or `admin`.
    pub role: Role,
    /// The listener's name (empty for the admin API).
    pub name: String,
    /// Its `bind` as the config wrote it.
    pub bind: String,
    /// A UDP socket (else a listening TCP socket).
    pub udp: bool,
}

/// What a socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A `[listeners.NAME]`.
    Listener,
    /// The `[admin]` API.
    Admin,
}

/// The sockets a successor received, taken one by one by the listeners of
/// its own config that match them; whatever is left is closed with it.
#[derive(Default)]
pub struct Inherited {
    sockets: Vec<(Passed, OwnedFd)>,
}

impl Inherited {
    /// The socket of a listener with this name, `bind` and kind, if the
    /// previous process had one.
    pub fn listener(&mut self, name: &str, bind: &str, udp: bool) -> Option<OwnedFd> {
        self.take(|p| p.role == Role::Listener && p.name == name && p.bind == bind && p.udp == udp)
    }

    /// The admin API's socket, if the previous process had one on `bind`.
    pub fn admin(&mut self, bind: &str) -> Option<OwnedFd> {
        self.take(|p| p.role == Role::Admin && p.bind == bind)
    }

    /// How many are still untaken.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether every socket was taken (or none came).
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    fn take(&mut self, matches: impl Fn(&Passed) -> bool) -> Option<OwnedFd> {
        let at = self.sockets.iter().position(|(p, _)| matches(p))?;
        Some(self.sockets.swap_remove(at).1)
    }
}

/// Send `sockets` (blocking) and the empty list that ends them.
pub fn send(stream: &UnixStream, sockets: &[(Passed, OwnedFd)]) -> std::io::Result<()> {
    for chunk in sockets.chunks(FDS_PER_MESSAGE) {
        let passed: Vec<&Passed> = chunk.iter().map(|(p, _)| p).collect();
        let fds: Vec<_> = chunk.iter().map(|(_, fd)| fd.as_fd()).collect();
        send_message(stream, &serde_json::to_vec(&passed)?, &fds)?;
    }
    send_message(stream, b"[]", &[])
}

fn send_message(stream: &UnixStream, json: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> std::io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut message = (json.len() as u32).to_be_bytes().to_vec();
    message.extend_from_slice(json);
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("handover: too many descriptors for one message"));
    }
    // The descriptors go with the first byte; the rest of a message that
    // did not go at once is plain data.
    let sent = sendmsg(stream, &[std::io::IoSlice::new(&message)], &mut control, SendFlags::NOSIGNAL)?;
    (&*stream).write_all(&message[sent..])
}

/// Receive one message: its JSON and the descriptors that came with it.
fn receive_message(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut fds = Vec::new();
    let mut length = [0u8; 4];
    read_exact_collecting(stream, &mut length, &mut fds)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_MESSAGE {
        return Err(std::io::Error::other(format!("handover: a {length}-byte message")));
    }
    let mut json = vec![0; length];
    read_exact_collecting(stream, &mut json, &mut fds)?;
    Ok((json, fds))
}

/// Fill `buf` exactly (never reading past it, into the next message),
/// keeping every descriptor that arrives meanwhile.
fn read_exact_collecting(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> std::io::Result<()> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut filled = 0;
    while filled < buf.len() {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            stream,
            &mut [std::io::IoSliceMut::new(&mut buf[filled..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if got.bytes == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += got.bytes;
    }
    Ok(())
}

/// A new process's side of a handover.
pub struct Successor {
    stream: UnixStream,
}

impl Successor {
    /// Connect to the predecessor's handover socket.
    pub fn connect(path: &std::path::Path) -> std::io::Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self { stream })
    }

    /// Every socket the predecessor passes.
    pub fn receive(&mut self) -> std::io::Result<Inherited> {
        let mut sockets = Vec::new();
        loop {
            let (json, fds) = receive_message(&self.stream)?;
            let passed: Vec<Passed> = serde_json::from_slice(&json)?;
            if passed.is_empty() {
                return Ok(Inherited { sockets });
            }
            if passed.len() != fds.len() {
                return Err(std::io::Error::other(format!(
                    "handover: {} sockets named, {} received",
                    passed.len(),
                    fds.len()
                )));
            }
            sockets.extend(passed.into_iter().zip(fds));
        }
    }

    /// Tell the predecessor this process serves: it stops accepting and
    /// drains.
    pub fn ready(mut self) -> std::io::Result<()> {
        writeln!(self.stream, "ready {}", std::process::id())
    }

    /// Tell the predecessor why this process cannot take over: it goes on.
    pub fn failed(mut self, why: &str) {
        let _ = writeln!(self.stream, "failed: {}", why.replace('\n', " "));
    }
}

/// The predecessor's side, after [`send`]: the successor's answer line,
/// `Ok(())` for `ready`, else what it said.
pub fn answer(stream: &UnixStream) -> std::io::Result<Result<(), String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while (&*stream).read(&mut byte)? == 1 && byte[0] != b'\n' && line.len() < 4096 {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    Ok(match line.strip_prefix("failed: ") {
        None if line.starts_with("ready") => Ok(()),
        Some(why) => Err(why.to_string()),
        None if line.is_empty() => Err("it closed the handover socket without a word".into()),
        None => Err(format!("it said `{line}`")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_cross_with_their_names_in_chunks_and_the_successor_answers() {
        let (parent, child) = UnixStream::pair().unwrap();
        let mut sockets = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..(FDS_PER_MESSAGE + 3) {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.push(l.local_addr().unwrap());
            let passed = Passed { role: Role::Listener, name: format!("l{i}"), bind: "127.0.0.1:0".into(), udp: false };
            sockets.push((passed, OwnedFd::from(l)));
        }
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin_addr = admin.local_addr().unwrap();
        sockets.push((
            Passed { role: Role::Admin, name: String::new(), bind: "127.0.0.1:0".into(), udp: false },
            admin.into(),
        ));
        let sender = std::thread::spawn(move || {
            send(&parent, &sockets).unwrap();
            answer(&parent).unwrap()
        });
        let mut successor = Successor { stream: child };
        let mut inherited = successor.receive().unwrap();
        assert_eq!(inherited.len(), FDS_PER_MESSAGE + 4);
        // Each name gets its own socket back: the same kernel socket, so the
        // same address.
        for (i, addr) in addrs.iter().enumerate() {
            let fd = inherited.listener(&format!("l{i}"), "127.0.0.1:0", false).unwrap();
            assert_eq!(std::net::TcpListener::from(fd).local_addr().unwrap(), *addr);
        }
        assert!(inherited.listener("l0", "127.0.0.1:0", false).is_none(), "taken once");
        assert!(inherited.admin("127.0.0.1:9").is_none(), "another bind is not this socket");
        let fd = inherited.admin("127.0.0.1:0").unwrap();
        assert_eq!(std::net::TcpListener::from(fd).local_addr().unwrap(), admin_addr);
        assert!(inherited.is_empty());
        successor.ready().unwrap();
        assert_eq!(sender.join().unwrap(), Ok(()));

        let (parent, child) = UnixStream::pair().unwrap();
        Successor { stream: child }.failed("listeners.web.bind: cannot bind\nsomething");
        assert_eq!(answer(&parent).unwrap(), Err("listeners.web.bind: cannot bind something".into()));
        let (parent, child) = UnixStream::pair().unwrap();
        drop(child);
        assert!(answer(&parent).unwrap().is_err());
    }
}
