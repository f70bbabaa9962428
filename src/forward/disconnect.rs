//! What the forwarder says to an ssh client it accepted but cannot serve:
//! the bytes of an SSH server's refusal before key exchange (RFC 4253), so
//! that OpenSSH prints `Received disconnect from …: <code>: <description>`
//! instead of a bare "Connection closed by remote host".
//!
//! The refusal is the server's identification line (§4.2) followed by one
//! unencrypted binary packet (§6) holding `SSH_MSG_DISCONNECT` (§11.1): no
//! cipher and no MAC are in use before the first key exchange, so the packet
//! is its length, its padding length, the payload and the padding, with the
//! total a multiple of 8 bytes. Pure: the forwarder writes these bytes only
//! while no upstream byte has reached the client.

/// The identification line the gate sends as an SSH server.
pub const IDENTIFICATION: &[u8] = b"SSH-2.0-gatectl\r\n";

/// `SSH_MSG_DISCONNECT` (RFC 4253 §12).
const SSH_MSG_DISCONNECT: u8 = 1;

/// The block size a packet's length is a multiple of while no cipher is in
/// use (RFC 4253 §6: at least 8).
const BLOCK: usize = 8;

/// The fewest padding bytes a packet may carry (RFC 4253 §6).
const MIN_PADDING: usize = 4;

/// The longest description sent, in bytes: OpenSSH prints at most 400.
pub const MAX_DESCRIPTION: usize = 400;

/// The reason codes of `SSH_MSG_DISCONNECT` the gate uses (RFC 4253 §11.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `SSH_DISCONNECT_HOST_NOT_ALLOWED_TO_CONNECT` (1): the entry is no
    /// longer declared (a reload removed it).
    HostNotAllowedToConnect,
    /// `SSH_DISCONNECT_CONNECTION_LOST` (10): the gate could not reach the
    /// upstream.
    ConnectionLost,
    /// `SSH_DISCONNECT_BY_APPLICATION` (11): the gate is stopping.
    ByApplication,
    /// `SSH_DISCONNECT_TOO_MANY_CONNECTIONS` (12): the gate's connection
    /// limit is reached.
    TooManyConnections,
}

impl Reason {
    /// The code on the wire, which OpenSSH prints.
    pub fn code(self) -> u32 {
        match self {
            Reason::HostNotAllowedToConnect => 1,
            Reason::ConnectionLost => 10,
            Reason::ByApplication => 11,
            Reason::TooManyConnections => 12,
        }
    }
}

/// The whole refusal: [`IDENTIFICATION`], then [`disconnect_packet`].
pub fn refusal(reason: Reason, description: &str) -> Vec<u8> {
    let mut bytes = IDENTIFICATION.to_vec();
    bytes.extend(disconnect_packet(reason, description));
    bytes
}

/// One unencrypted binary packet holding `SSH_MSG_DISCONNECT` with `reason`,
/// `description` (control characters replaced by `?`, cut to
/// [`MAX_DESCRIPTION`] bytes at a character boundary) and an empty language
/// tag. The padding is zeros: before key exchange nothing depends on it
/// being random, and fixed bytes keep the encoding testable.
pub fn disconnect_packet(reason: Reason, description: &str) -> Vec<u8> {
    let description = printable(description);
    let mut payload = vec![SSH_MSG_DISCONNECT];
    payload.extend(reason.code().to_be_bytes());
    put_string(&mut payload, description.as_bytes());
    put_string(&mut payload, b"");
    // packet_length (4) + padding_length (1) + payload + padding ≡ 0 mod 8
    let unpadded = 4 + 1 + payload.len();
    let mut padding = BLOCK - unpadded % BLOCK;
    if padding < MIN_PADDING {
        padding += BLOCK;
    }
    let packet_length = 1 + payload.len() + padding;
    let mut packet = Vec::with_capacity(4 + packet_length);
    packet.extend(
        u32::try_from(packet_length)
            .expect("a short packet")
            .to_be_bytes(),
    );
    packet.push(u8::try_from(padding).expect("at most 11 bytes of padding"));
    packet.extend(payload);
    packet.resize(4 + packet_length, 0);
    packet
}

/// Appends an SSH `string`: a 32-bit big-endian length, then the bytes.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend(u32::try_from(bytes.len()).expect("a short string").to_be_bytes());
    out.extend(bytes);
}

/// `text` without control characters, at most [`MAX_DESCRIPTION`] bytes.
fn printable(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().map(|c| if c.is_control() { '?' } else { c }) {
        if out.len() + c.len_utf8() > MAX_DESCRIPTION {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client reads from one packet: (reason, description, language).
    fn decode(packet: &[u8]) -> (u32, String, String) {
        let length = u32::from_be_bytes(packet[0..4].try_into().unwrap()) as usize;
        assert_eq!(packet.len(), 4 + length, "packet_length covers the rest");
        assert_eq!(packet.len() % BLOCK, 0, "a multiple of the block size");
        let padding = packet[4] as usize;
        assert!(padding >= MIN_PADDING, "at least 4 bytes of padding");
        let payload = &packet[5..packet.len() - padding];
        assert_eq!(payload[0], SSH_MSG_DISCONNECT);
        let reason = u32::from_be_bytes(payload[1..5].try_into().unwrap());
        let mut rest = &payload[5..];
        let mut string = || {
            let n = u32::from_be_bytes(rest[0..4].try_into().unwrap()) as usize;
            let s = String::from_utf8(rest[4..4 + n].to_vec()).unwrap();
            rest = &rest[4 + n..];
            s
        };
        let (description, language) = (string(), string());
        assert!(rest.is_empty(), "nothing after the language tag");
        (reason, description, language)
    }

    #[test]
    fn encodes_a_disconnect_byte_for_byte() {
        let packet = disconnect_packet(Reason::TooManyConnections, "full");
        #[rustfmt::skip]
        let expected = [
            0, 0, 0, 28,            // packet_length: 1 + 17 + 10
            10,                     // padding_length
            1,                      // SSH_MSG_DISCONNECT
            0, 0, 0, 12,            // SSH_DISCONNECT_TOO_MANY_CONNECTIONS
            0, 0, 0, 4, b'f', b'u', b'l', b'l',
            0, 0, 0, 0,             // empty language tag
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(packet, expected);
    }

    #[test]
    fn every_length_pads_to_a_block_with_at_least_four_bytes() {
        for n in 0..40 {
            let description = "x".repeat(n);
            let (reason, text, language) = decode(&disconnect_packet(Reason::ConnectionLost, &description));
            assert_eq!(
                (reason, text.as_str(), language.as_str()),
                (10, description.as_str(), "")
            );
        }
    }

    #[test]
    fn reason_codes_are_rfc_4253s() {
        let codes = [
            Reason::HostNotAllowedToConnect,
            Reason::ConnectionLost,
            Reason::ByApplication,
            Reason::TooManyConnections,
        ]
        .map(Reason::code);
        assert_eq!(codes, [1, 10, 11, 12]);
    }

    #[test]
    fn the_refusal_starts_with_the_identification_line() {
        let text = "gatectl gate alice: upstream github (10.99.2.1:22) refused the connection";
        let bytes = refusal(Reason::ConnectionLost, text);
        assert!(bytes.starts_with(b"SSH-2.0-gatectl\r\n"));
        let (reason, description, _) = decode(&bytes[IDENTIFICATION.len()..]);
        assert_eq!((reason, description.as_str()), (10, text));
    }

    #[test]
    fn descriptions_lose_control_characters_and_excess_length() {
        let (_, text, _) = decode(&disconnect_packet(Reason::ByApplication, "a\r\nb\x1b[31m"));
        assert_eq!(text, "a??b?[31m");
        let long = "é".repeat(MAX_DESCRIPTION);
        let (_, text, _) = decode(&disconnect_packet(Reason::ByApplication, &long));
        assert_eq!(text, "é".repeat(MAX_DESCRIPTION / 2));
        let (_, text, _) = decode(&disconnect_packet(Reason::ByApplication, &format!("x{long}")));
        assert_eq!(text.len(), MAX_DESCRIPTION - 1, "cut at a character boundary");
    }
}
