//! One forwarding rule of a gate: a listen port, the alias the agent knows the
//! host by, and the upstream addresses to try in order.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::alias::Alias;
use crate::error::Error;

/// What a route looks like on the command line, for error messages.
const ROUTE_FORMAT: &str = "a route is PORT,ALIAS,ADDR:PORT[,ADDR:PORT...], e.g. \
                            30000,github,140.82.121.4:22,[2001:db8::1]:22";

/// One forwarding rule: connections accepted on `listen_port` go to the first
/// of `upstreams` that accepts them.
///
/// Its text form, used on the `gatectl forward` command line, is
/// `PORT,ALIAS,ADDR:PORT[,ADDR:PORT...]`, with IPv6 addresses in brackets
/// (`30000,github,[2001:db8::1]:22`). [`Display`](fmt::Display) and
/// [`FromStr`] round-trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRoute {
    /// The port the forwarder listens on, on the gate's internal address.
    pub listen_port: u16,
    /// The alias the agent's ssh config uses for this host; kept for the
    /// audit log.
    pub alias: Alias,
    /// Upstream addresses, tried in order until one connects. Never empty.
    pub upstreams: Vec<SocketAddr>,
}

impl fmt::Display for ForwardRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.listen_port, self.alias)?;
        for upstream in &self.upstreams {
            write!(f, ",{upstream}")?;
        }
        Ok(())
    }
}

impl FromStr for ForwardRoute {
    type Err = Error;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let invalid = |why: String| Error::invalid(format!("invalid route {raw:?}: {why}; {ROUTE_FORMAT}"));
        let mut fields = raw.split(',');
        let port = fields.next().unwrap_or_default();
        let listen_port = match port.parse::<u16>() {
            Ok(0) | Err(_) => {
                return Err(invalid(format!(
                    "listen port {port:?} is not a number from 1 to 65535"
                )))
            }
            Ok(port) => port,
        };
        let alias = fields
            .next()
            .ok_or_else(|| invalid("it has no alias".to_string()))?;
        let alias = Alias::parse(alias).map_err(|e| invalid(e.to_string()))?;
        let upstreams = fields
            .map(|field| match field.parse::<SocketAddr>() {
                Ok(addr) if addr.port() == 0 => Err(invalid(format!("upstream {field:?} has port 0"))),
                Ok(addr) => Ok(addr),
                Err(_) => Err(invalid(format!(
                    "upstream {field:?} is not an IP address and port (IPv6 goes in brackets: [::1]:22)"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if upstreams.is_empty() {
            return Err(invalid("it has no upstream address".to_string()));
        }
        Ok(ForwardRoute {
            listen_port,
            alias,
            upstreams,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alias::MAX_ALIAS_LEN;

    fn parse(raw: &str) -> ForwardRoute {
        raw.parse()
            .unwrap_or_else(|e| panic!("{raw:?} should parse: {e}"))
    }

    fn error(raw: &str) -> String {
        match raw.parse::<ForwardRoute>() {
            Ok(route) => panic!("{raw:?} should not parse, got {route:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_ipv4_and_ipv6_upstreams_in_order() {
        let route = parse("30000,github,140.82.121.4:22,[2001:db8::1]:2222");
        assert_eq!(route.listen_port, 30000);
        assert_eq!(route.alias.as_str(), "github");
        assert_eq!(
            route.upstreams,
            [
                "140.82.121.4:22".parse().unwrap(),
                "[2001:db8::1]:2222".parse().unwrap()
            ]
        );
    }

    #[test]
    fn display_and_parse_round_trip() {
        for raw in [
            "30000,github,140.82.121.4:22",
            "30001,my-host.example_1,[::1]:22,127.0.0.1:2222,[2001:db8::5]:65535",
            "1,a,10.0.0.1:1",
            "65535,A.B-c_D,[fe80::1%2]:22",
        ] {
            let route = parse(raw);
            assert_eq!(route.to_string(), raw);
            assert_eq!(parse(&route.to_string()), route);
        }
    }

    #[test]
    fn round_trips_from_the_struct() {
        let route = ForwardRoute {
            listen_port: 30002,
            alias: "x".repeat(MAX_ALIAS_LEN).parse().unwrap(),
            upstreams: vec!["[::1]:22".parse().unwrap(), "192.0.2.1:22".parse().unwrap()],
        };
        assert_eq!(parse(&route.to_string()), route);
    }

    #[test]
    fn refuses_bad_listen_ports() {
        for raw in [
            "0,a,127.0.0.1:22",
            "65536,a,127.0.0.1:22",
            "x,a,127.0.0.1:22",
            ",a,127.0.0.1:22",
            "",
        ] {
            assert!(error(raw).contains("listen port"), "{raw:?}: {}", error(raw));
        }
    }

    #[test]
    fn refuses_bad_aliases_as_the_manifest_does() {
        assert!(error("30000").contains("no alias"));
        let long = "a".repeat(MAX_ALIAS_LEN + 1);
        for alias in ["", "a b", "a;rm", "héllo", ".hidden", "-oProxyCommand", &long] {
            let message = error(&format!("30000,{alias},127.0.0.1:22"));
            let refusal = Alias::parse(alias).unwrap_err().to_string();
            assert!(message.contains(&refusal), "{alias:?}: {message}");
            assert!(message.contains("PORT,ALIAS,ADDR:PORT"), "{message}");
        }
    }

    #[test]
    fn refuses_bad_upstreams() {
        assert!(error("30000,a").contains("no upstream"));
        assert!(error("30000,a,").contains("upstream \"\""));
        assert!(error("30000,a,github.com:22").contains("not an IP address"));
        assert!(error("30000,a,127.0.0.1").contains("not an IP address"));
        assert!(error("30000,a,::1:22").contains("brackets"));
        assert!(error("30000,a,127.0.0.1:0").contains("port 0"));
        assert!(error("30000,a,127.0.0.1:22,").contains("upstream \"\""));
    }

    #[test]
    fn errors_name_the_route_and_the_format() {
        let message = error("30000,a,nope");
        assert!(message.starts_with("invalid route \"30000,a,nope\""), "{message}");
        assert!(message.contains("PORT,ALIAS,ADDR:PORT"), "{message}");
    }
}
