//! The kernel side of a gate: named network namespaces, links and addresses
//! over rtnetlink, routing rules, sysctls, and gatectl's nftables tables.
//! These are adapters: they do what they are told and report typed facts;
//! the policy, and the wording of messages for the user, live above them.

pub mod firewall;
pub mod link;
pub mod netns;
pub mod nft_generation;
mod nftlib;
pub mod rule;
pub mod sysctl;
