//! The nftables generation of a network namespace: a number the kernel
//! moves on at every committed change of that namespace's ruleset, whoever
//! makes it (`NFT_MSG_GETGEN`, what `nft monitor` and libnftables' cache
//! use to notice changes).
//!
//! One request and one short answer, where listing a table builds
//! libnftables' whole cache and a JSON document: this is what lets
//! `gatectl check` and `reconcile` tell, at thousands of gates, which gate
//! netns tables nobody touched since gatectl applied them (see
//! [`TableSeal`](super::firewall::gate::TableSeal)).

use netlink_packet_core::{NetlinkBuffer, NlaBuffer, NlasIterator, NLMSG_ERROR, NLM_F_REQUEST};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use crate::error::{Context, Error, Result};

/// nfnetlink's subsystem of nftables.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// The request for the generation.
const NFT_MSG_GETGEN: u16 = 16;
/// The answer's attribute holding the generation (a big-endian u32).
const NFTA_GEN_ID: u16 = 1;
/// Length of a netlink header plus nfnetlink's `struct nfgenmsg`.
const REQUEST_LEN: usize = 20;

/// The nftables generation of the calling thread's network namespace.
pub fn current() -> Result<u32> {
    let context = "cannot read the nftables generation (NFT_MSG_GETGEN)";
    let mut socket = Socket::new(NETLINK_NETFILTER).context(context)?;
    socket.bind_auto().context(context)?;
    socket.send(&request(), 0).context(context)?;
    let mut answer = Vec::with_capacity(4096);
    socket.recv(&mut answer, 0).context(context)?;
    parse(&answer).map_err(|e| Error::failed(format!("{context}: {e}")))
}

/// The request: a netlink header and an empty `struct nfgenmsg`.
fn request() -> [u8; REQUEST_LEN] {
    let mut message = [0u8; REQUEST_LEN];
    message[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    message[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    message[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    message[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // pid 0 (the kernel), then nfgenmsg: family AF_UNSPEC, version 0, res_id 0.
    message
}

/// The generation in the kernel's answer.
fn parse(answer: &[u8]) -> std::result::Result<u32, String> {
    let message = NetlinkBuffer::new_checked(answer).map_err(|e| format!("a malformed answer ({e})"))?;
    let payload = message.payload();
    if message.message_type() == NLMSG_ERROR {
        let code = payload
            .get(0..4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or_default();
        return Err(std::io::Error::from_raw_os_error(-code).to_string());
    }
    let attributes = payload.get(4..).ok_or("an answer without its nfgenmsg")?;
    for attribute in NlasIterator::new(attributes) {
        let attribute: NlaBuffer<&[u8]> = attribute.map_err(|e| format!("a malformed attribute ({e})"))?;
        if attribute.kind() == NFTA_GEN_ID {
            let value: [u8; 4] = attribute
                .value()
                .try_into()
                .map_err(|_| "a generation that is not 4 bytes long")?;
            return Ok(u32::from_be_bytes(value));
        }
    }
    Err("an answer without the generation".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer the kernel sends: header, nfgenmsg, NFTA_GEN_ID and
    /// NFTA_GEN_PROC_PID.
    fn answer(generation: u32) -> Vec<u8> {
        let mut message = Vec::new();
        message.extend_from_slice(&36u32.to_ne_bytes());
        message.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | 15).to_ne_bytes());
        message.extend_from_slice(&[0; 10]);
        message.extend_from_slice(&[0, 0, 0, 0]);
        message.extend_from_slice(&8u16.to_ne_bytes());
        message.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
        message.extend_from_slice(&generation.to_be_bytes());
        message.extend_from_slice(&8u16.to_ne_bytes());
        message.extend_from_slice(&2u16.to_ne_bytes());
        message.extend_from_slice(&4242u32.to_be_bytes());
        message
    }

    #[test]
    fn reads_the_generation_of_an_answer() {
        assert_eq!(parse(&answer(7)), Ok(7));
        assert_eq!(parse(&answer(0x0102_0304)), Ok(0x0102_0304));
    }

    #[test]
    fn an_error_answer_names_the_errno() {
        let mut message = Vec::new();
        message.extend_from_slice(&36u32.to_ne_bytes());
        message.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        message.extend_from_slice(&[0; 10]);
        message.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        message.extend_from_slice(&[0; 16]);
        assert!(
            parse(&message).unwrap_err().contains("not permitted"),
            "{:?}",
            parse(&message)
        );
    }

    #[test]
    fn the_request_is_a_getgen_of_20_bytes() {
        let request = request();
        let header = NetlinkBuffer::new_checked(&request[..]).unwrap();
        assert_eq!(header.length(), 20);
        assert_eq!(header.message_type(), (10 << 8) | 16);
    }
}
