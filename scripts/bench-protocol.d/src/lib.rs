//! What the benchmark's binaries share: hk's exec path (`CreateProcess`, then `Wait`) served
//! in each of the two protocols, and the request the round trip sends.
//!
//! Both servers answer at once without doing the work: what is measured is the protocol
//! (encoding, framing, the library's threads and copies), not process creation.

include!(concat!(env!("OUT_DIR"), "/mod.rs"));

use hk_agent_protocol::{
    read_frame, write_frame, ErrorKind, ErrorReply, ExitStatus, Open, Outcome, ProcessSpec, Reply,
    Request, RequestBody, Response,
};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

/// The process each round trip creates: what `hk run IMAGE true` asks for.
pub fn spec() -> ProcessSpec {
    ProcessSpec {
        id: "main".into(),
        argv: vec!["true".into()],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        main: true,
        ..Default::default()
    }
}

/// [`spec`] as the ttrpc message, field for field (`rlimits` and `tty`, empty in it, stay
/// empty).
pub fn ttrpc_request() -> agent::CreateProcessRequest {
    let spec = spec();
    agent::CreateProcessRequest {
        process: spec.id,
        argv: spec.argv,
        env: spec.env,
        cwd: spec.cwd,
        create_cwd: spec.create_cwd,
        user: spec.user,
        additional_groups: spec.additional_groups,
        umask: spec.umask,
        stdin: spec.stdin,
        main: spec.main,
        ..Default::default()
    }
}

/// Serves one connection in hk's protocol as hk-agent does: an [`Open`] frame, then requests,
/// each answered on the connection's own thread, until the host closes it.
pub fn serve_json(mut conn: UnixStream) -> Result<(), hk_agent_protocol::Error> {
    if read_frame::<Open>(&mut conn)? != Some(Open::Control) {
        return Ok(());
    }
    while let Some(req) = read_frame::<Request>(&mut conn)? {
        let result = match req.body {
            RequestBody::CreateProcess(_) | RequestBody::Signal { .. } => Outcome::Ok(Reply::Done),
            RequestBody::Wait { .. } => Outcome::Ok(Reply::Exited(ExitStatus::Code(0))),
            _ => Outcome::Error(ErrorReply {
                kind: ErrorKind::Unsupported,
                message: "not in this benchmark".into(),
            }),
        };
        write_frame(&mut conn, &Response { id: req.id, result })?;
    }
    Ok(())
}

/// Accepts connections forever, a thread for each, as hk-agent does.
pub fn serve_json_forever(listener: UnixListener) -> std::io::Result<()> {
    loop {
        let (conn, _) = listener.accept()?;
        std::thread::spawn(move || serve_json(conn));
    }
}

/// The ttrpc service: the same answers as [`serve_json`].
struct Agent;

impl agent_ttrpc::Agent for Agent {
    fn create_process(
        &self,
        _: &ttrpc::TtrpcContext,
        _: agent::CreateProcessRequest,
    ) -> ttrpc::Result<agent::Empty> {
        Ok(agent::Empty::new())
    }

    fn wait(
        &self,
        _: &ttrpc::TtrpcContext,
        _: agent::WaitRequest,
    ) -> ttrpc::Result<agent::ExitStatus> {
        let mut status = agent::ExitStatus::new();
        status.set_code(0);
        Ok(status)
    }
}

/// Starts a ttrpc server on the Unix socket `path`, with the crate's default worker pool.
/// It runs on its own threads until the returned server is dropped.
pub fn start_ttrpc(path: &str) -> ttrpc::Result<ttrpc::Server> {
    let mut server = ttrpc::Server::new()
        .bind(&format!("unix://{path}"))?
        .register_service(agent_ttrpc::create_agent(Arc::new(Agent)));
    server.start()?;
    Ok(server)
}
