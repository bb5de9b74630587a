//! Published ports: docker's `-p` syntax, `-P`, and how they are shown (`hk ps`, `hk port`,
//! `inspect`). A publication is kept in the container's config as given (host port 0 for
//! "any"); the supervisor picks the free host ports at each start, as docker does, and
//! records the result in the container's state.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// The host address the port is bound to; `None` is every address (docker's default).
    pub host_ip: Option<IpAddr>,
    /// 0: any free port, chosen at start.
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl Port {
    /// `80/tcp`, docker's key for a container port.
    pub fn key(&self) -> String {
        format!("{}/{}", self.container_port, self.proto.as_str())
    }

    pub fn host_ip_text(&self) -> String {
        self.host_ip
            .map_or_else(|| "0.0.0.0".into(), |ip| ip.to_string())
    }

    /// `0.0.0.0:8080->80/tcp`, as `docker ps` shows it.
    pub fn display(&self) -> String {
        let ip = match self.host_ip {
            Some(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.host_ip_text(),
        };
        format!("{ip}:{}->{}", self.host_port, self.key())
    }
}

/// Parses one `-p`: `[IP:][HOSTPORT:]CONTAINERPORT[/PROTO]`, where ports may be ranges of
/// equal length (`8000-8009:80-89`) and an IPv6 address is bracketed. A missing host port
/// (`-p 80`, `-p 127.0.0.1::80`) means any free one.
pub fn parse_publish(spec: &str) -> anyhow::Result<Vec<Port>> {
    let hint = || {
        format!(
            "invalid -p {spec:?}: give [IP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp], \
             e.g. -p 8080:80 or -p 127.0.0.1:5353:53/udp"
        )
    };
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((rest, "tcp")) => (rest, Proto::Tcp),
        Some((rest, "udp")) => (rest, Proto::Udp),
        Some((_, other)) => bail!("{}: unknown protocol {other:?}", hint()),
        None => (spec, Proto::Tcp),
    };
    // The address, when there is one, is whatever comes before the last two colons.
    let (ip, ports) = if let Some(after) = rest.strip_prefix('[') {
        let (ip, ports) = after.split_once("]:").with_context(hint)?;
        (Some(ip), ports)
    } else {
        match rest.matches(':').count() {
            0 | 1 => (None, rest),
            2 => {
                let (ip, ports) = rest.split_once(':').expect("two colons");
                (Some(ip), ports)
            }
            _ => bail!("{}: bracket an IPv6 address ([::1]:8080:80)", hint()),
        }
    };
    let host_ip = match ip {
        None | Some("") => None,
        Some(ip) => Some(
            ip.parse::<IpAddr>()
                .with_context(|| format!("{}: {ip:?} is not an IP address", hint()))?,
        ),
    };
    let (host, container) = match ports.split_once(':') {
        Some((h, c)) => (h, c),
        None => ("", ports),
    };
    let container = range(container).with_context(hint)?;
    let host = if host.is_empty() {
        None
    } else {
        Some(range(host).with_context(hint)?)
    };
    let count = container.1 - container.0 + 1;
    if let Some(h) = host {
        if h.1 - h.0 + 1 != count {
            bail!(
                "{}: the host range and the container range differ in length",
                hint()
            );
        }
    }
    Ok((0..count)
        .map(|i| Port {
            host_ip,
            host_port: host.map_or(0, |h| h.0 + i),
            container_port: container.0 + i,
            proto,
        })
        .collect())
}

/// `80` or `8000-8009`, with no port 0.
fn range(text: &str) -> anyhow::Result<(u16, u16)> {
    let port = |t: &str| -> anyhow::Result<u16> {
        match t.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => bail!("{t:?} is not a port (1-65535)"),
        }
    };
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                bail!("the range {text:?} runs backwards");
            }
            Ok((a, b))
        }
        None => {
            let p = port(text)?;
            Ok((p, p))
        }
    }
}

/// `-P`: each exposed port (`80/tcp`, `53/udp`, `8080`) on any free host port.
pub fn publish_all(exposed: &[String]) -> Vec<Port> {
    exposed
        .iter()
        .filter_map(|e| {
            let (port, proto) = match e.split_once('/') {
                Some((p, "udp")) => (p, Proto::Udp),
                Some((p, _)) => (p, Proto::Tcp),
                None => (e.as_str(), Proto::Tcp),
            };
            Some(Port {
                host_ip: None,
                host_port: 0,
                container_port: port.parse().ok().filter(|p| *p > 0)?,
                proto,
            })
        })
        .collect()
}

/// Refuses two publications of one host port, which would fail only at start.
pub fn check_unique(ports: &[Port]) -> anyhow::Result<()> {
    for (i, p) in ports.iter().enumerate() {
        if p.host_port != 0
            && ports[..i].iter().any(|q| {
                q.host_port == p.host_port
                    && q.proto == p.proto
                    && (q.host_ip.is_none() || p.host_ip.is_none() || q.host_ip == p.host_ip)
            })
        {
            bail!(
                "host port {}/{} is published twice: give each -p its own host port",
                p.host_port,
                p.proto.as_str()
            );
        }
    }
    Ok(())
}

/// Binds each publication's host port now: a port that is taken is refused with docker's
/// message before the VM boots, and a port 0 becomes the free port the kernel chose. The
/// port is released again for passt to bind a moment later.
pub fn allocate(ports: &[Port]) -> anyhow::Result<Vec<Port>> {
    ports
        .iter()
        .map(|p| {
            let ip = p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let addr = SocketAddr::new(ip, p.host_port);
            let bound = match p.proto {
                Proto::Tcp => TcpListener::bind(addr).and_then(|l| l.local_addr()),
                Proto::Udp => UdpSocket::bind(addr).and_then(|s| s.local_addr()),
            };
            let port = bound
                .with_context(|| {
                    format!(
                        "cannot publish {}: binding {addr}/{} failed (is the port already \
                         allocated? choose another host port)",
                        p.key(),
                        p.proto.as_str()
                    )
                })?
                .port();
            Ok(Port {
                host_port: port,
                ..p.clone()
            })
        })
        .collect()
}

/// `-t ADDR/HOSTPORT:CONTAINERPORT` for passt.
pub fn passt_args(ports: &[Port]) -> Vec<String> {
    ports
        .iter()
        .flat_map(|p| {
            let flag = match p.proto {
                Proto::Tcp => "-t",
                Proto::Udp => "-u",
            };
            let addr = p.host_ip.map(|ip| format!("{ip}/")).unwrap_or_default();
            [
                flag.to_string(),
                format!("{addr}{}:{}", p.host_port, p.container_port),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(spec: &str) -> Port {
        let mut v = parse_publish(spec).unwrap();
        assert_eq!(v.len(), 1, "{spec}");
        v.remove(0)
    }

    #[test]
    fn docker_publish_forms() {
        assert_eq!(
            one("8080:80"),
            Port {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                proto: Proto::Tcp
            }
        );
        let p = one("80");
        assert_eq!((p.host_port, p.container_port), (0, 80));
        let p = one("127.0.0.1:5353:53/udp");
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            (p.host_port, p.container_port, p.proto),
            (5353, 53, Proto::Udp)
        );
        let p = one("127.0.0.1::80");
        assert_eq!((p.host_port, p.container_port), (0, 80));
        let p = one("[::1]:8080:80/tcp");
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        assert_eq!(p.display(), "[::1]:8080->80/tcp");
        assert_eq!(one("8080:80").display(), "0.0.0.0:8080->80/tcp");
        let r = parse_publish("8000-8002:80-82").unwrap();
        assert_eq!(
            r.iter()
                .map(|p| (p.host_port, p.container_port))
                .collect::<Vec<_>>(),
            [(8000, 80), (8001, 81), (8002, 82)]
        );
        assert_eq!(parse_publish("80-81").unwrap().len(), 2);
    }

    #[test]
    fn bad_publish_forms_say_what_to_give() {
        for bad in [
            "",
            "0",
            "80/sctp",
            "x:80",
            "8080:",
            "70000",
            "8000-8001:80",
            "90-80",
            "1.2.3:80:80",
            "::1:80:80",
        ] {
            let e = parse_publish(bad).unwrap_err();
            assert!(format!("{e:#}").contains("-p"), "{bad}: {e:#}");
        }
    }

    #[test]
    fn publish_all_takes_exposed_ports() {
        let p = publish_all(&["80/tcp".into(), "53/udp".into(), "9000".into(), "x".into()]);
        assert_eq!(
            p.iter()
                .map(|p| (p.host_port, p.container_port, p.proto))
                .collect::<Vec<_>>(),
            [
                (0, 80, Proto::Tcp),
                (0, 53, Proto::Udp),
                (0, 9000, Proto::Tcp)
            ]
        );
    }

    #[test]
    fn a_host_port_published_twice_is_refused() {
        let mut p = parse_publish("8080:80").unwrap();
        p.extend(parse_publish("127.0.0.1:8080:81").unwrap());
        assert!(check_unique(&p).is_err());
        let mut p = parse_publish("8080:80").unwrap();
        p.extend(parse_publish("8080:80/udp").unwrap());
        p.extend(parse_publish("80").unwrap());
        p.extend(parse_publish("81").unwrap());
        check_unique(&p).unwrap();
    }

    #[test]
    fn allocation_picks_free_ports_and_refuses_taken_ones() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let spec = format!("127.0.0.1:{port}:80");
        let e = allocate(&parse_publish(&spec).unwrap()).unwrap_err();
        assert!(format!("{e:#}").contains("already allocated"), "{e:#}");
        let got = allocate(&parse_publish("127.0.0.1::80/udp").unwrap()).unwrap();
        assert_ne!(got[0].host_port, 0);
        assert_eq!(
            passt_args(&got),
            [
                "-u".to_string(),
                format!("127.0.0.1/{}:80", got[0].host_port)
            ]
        );
    }
}
