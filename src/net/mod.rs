//! The kernel side of a gate: named network namespaces, links and addresses
//! over rtnetlink, IPv4 forwarding, and the host firewall.

pub mod firewall;
pub mod link;
pub mod netns;
mod nftlib;
pub mod sysctl;
