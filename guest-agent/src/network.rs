//! The guest's network interfaces: loopback up, and each NIC the host describes given its
//! address, MTU and default route. Done with the classic interface and routing ioctls
//! (SIOCSIFFLAGS, SIOCSIFADDR, SIOCSIFNETMASK, SIOCSIFMTU, SIOCADDRT) rather than netlink:
//! static IPv4 configuration of a known NIC is all the agent does, and these are a handful
//! of system calls where a netlink crate would bring an async runtime into PID 1.

use hk_agent_protocol::Interface;
use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Brings loopback up and configures `interfaces`.
pub fn configure(interfaces: &[Interface]) -> Result<(), String> {
    let sock = socket()?;
    set_up(&sock, "lo")?;
    for iface in interfaces {
        let name = by_mac(&iface.mac)?;
        let (addr, prefix) = parse_cidr(&iface.address)?;
        if let Some(mtu) = iface.mtu {
            let mut req = ifreq(&name)?;
            req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
            ioctl(&sock, libc::SIOCSIFMTU, &mut req, &name, "set the MTU")?;
        }
        let mut req = ifreq(&name)?;
        req.ifr_ifru.ifru_addr = sockaddr(addr);
        ioctl(&sock, libc::SIOCSIFADDR, &mut req, &name, "set the address")?;
        let mut req = ifreq(&name)?;
        req.ifr_ifru.ifru_netmask = sockaddr(netmask(prefix));
        ioctl(
            &sock,
            libc::SIOCSIFNETMASK,
            &mut req,
            &name,
            "set the netmask",
        )?;
        set_up(&sock, &name)?;
        if let Some(gw) = &iface.gateway {
            let gw: Ipv4Addr = gw
                .parse()
                .map_err(|_| format!("gateway {gw:?} is not an IPv4 address"))?;
            default_route(&sock, gw, &name)?;
        }
    }
    Ok(())
}

fn socket() -> Result<OwnedFd, String> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "network configuration socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface whose MAC address is `mac`.
fn by_mac(mac: &str) -> Result<String, String> {
    let want = mac.to_ascii_lowercase();
    let entries = fs::read_dir("/sys/class/net").map_err(|e| format!("/sys/class/net: {e}"))?;
    for entry in entries.flatten() {
        let address = fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        if address.trim() == want {
            return Ok(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Err(format!("no network interface with MAC address {mac}"))
}

fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("{text:?} is not an IPv4 address with a prefix length (10.0.2.15/24)");
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().ok().filter(|&p| p <= 32).ok_or_else(bad)?;
    Ok((addr, prefix))
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

fn ifreq(name: &str) -> Result<libc::ifreq, String> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(format!("interface name {name:?} is too long"));
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it by family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl<T>(
    sock: &OwnedFd,
    request: libc::Ioctl,
    arg: &mut T,
    name: &str,
    what: &str,
) -> Result<(), String> {
    // SAFETY: `arg` is the structure `request` takes, valid for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, arg as *mut T) };
    if rc < 0 {
        return Err(format!(
            "{name}: cannot {what}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn set_up(sock: &OwnedFd, name: &str) -> Result<(), String> {
    let mut req = ifreq(name)?;
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req, name, "read its flags")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req, name, "bring it up")
}

fn default_route(sock: &OwnedFd, gateway: Ipv4Addr, name: &str) -> Result<(), String> {
    let dev = std::ffi::CString::new(name).map_err(|_| "bad interface name".to_string())?;
    // SAFETY: rtentry is plain data; zeroes are "unset" for every field.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    rt.rt_dev = dev.as_ptr() as *mut libc::c_char;
    ioctl(
        sock,
        libc::SIOCADDRT,
        &mut rt,
        name,
        "add the default route",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_masks() {
        assert_eq!(
            parse_cidr("10.0.2.15/24").unwrap(),
            ("10.0.2.15".parse().unwrap(), 24)
        );
        assert!(parse_cidr("10.0.2.15").is_err());
        assert!(parse_cidr("10.0.2.15/33").is_err());
        assert!(parse_cidr("fe80::1/64").is_err());
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(17), Ipv4Addr::new(255, 255, 128, 0));
    }
}
