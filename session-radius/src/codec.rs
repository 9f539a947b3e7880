//! RADIUS messages. The `radius` crate encodes and decodes them and computes
//! the packet authenticators; this module adds what it lacks: the
//! Message-Authenticator (HMAC-MD5, RFC 3579 and RFC 5176, the BlastRADIUS
//! defence), vendor attributes, and the attribute numbers the agent speaks.

use hmac::{Hmac, Mac};
use md5::Md5;
use radius::core::{avp::AVP, code::Code, packet::Packet};

pub use radius::core::code::Code as PacketCode;

/// Attribute types (RFC 2865, 2866, 2869, 3576), by the names the agent
/// uses, with the numbers of the `radius` crate's dictionaries.
pub mod attr {
    use radius::core::{rfc2865 as a, rfc2866 as acct, rfc2869 as ext, rfc3576 as dynamic};

    pub const USER_NAME: u8 = a::USER_NAME_TYPE;
    pub const USER_PASSWORD: u8 = a::USER_PASSWORD_TYPE;
    pub const NAS_IP_ADDRESS: u8 = a::NAS_IP_ADDRESS_TYPE;
    pub const SERVICE_TYPE: u8 = a::SERVICE_TYPE_TYPE;
    pub const FRAMED_IP_ADDRESS: u8 = a::FRAMED_IP_ADDRESS_TYPE;
    pub const REPLY_MESSAGE: u8 = a::REPLY_MESSAGE_TYPE;
    pub const STATE: u8 = a::STATE_TYPE;
    pub const CLASS: u8 = a::CLASS_TYPE;
    pub const VENDOR_SPECIFIC: u8 = a::VENDOR_SPECIFIC_TYPE;
    pub const SESSION_TIMEOUT: u8 = a::SESSION_TIMEOUT_TYPE;
    pub const IDLE_TIMEOUT: u8 = a::IDLE_TIMEOUT_TYPE;
    pub const CALLED_STATION_ID: u8 = a::CALLED_STATION_ID_TYPE;
    pub const CALLING_STATION_ID: u8 = a::CALLING_STATION_ID_TYPE;
    pub const NAS_IDENTIFIER: u8 = a::NAS_IDENTIFIER_TYPE;
    pub const NAS_PORT_TYPE: u8 = a::NAS_PORT_TYPE_TYPE;
    pub const ACCT_STATUS_TYPE: u8 = acct::ACCT_STATUS_TYPE_TYPE;
    pub const ACCT_DELAY_TIME: u8 = acct::ACCT_DELAY_TIME_TYPE;
    pub const ACCT_INPUT_OCTETS: u8 = acct::ACCT_INPUT_OCTETS_TYPE;
    pub const ACCT_OUTPUT_OCTETS: u8 = acct::ACCT_OUTPUT_OCTETS_TYPE;
    pub const ACCT_SESSION_ID: u8 = acct::ACCT_SESSION_ID_TYPE;
    pub const ACCT_AUTHENTIC: u8 = acct::ACCT_AUTHENTIC_TYPE;
    pub const ACCT_SESSION_TIME: u8 = acct::ACCT_SESSION_TIME_TYPE;
    pub const ACCT_INPUT_PACKETS: u8 = acct::ACCT_INPUT_PACKETS_TYPE;
    pub const ACCT_OUTPUT_PACKETS: u8 = acct::ACCT_OUTPUT_PACKETS_TYPE;
    pub const ACCT_TERMINATE_CAUSE: u8 = acct::ACCT_TERMINATE_CAUSE_TYPE;
    pub const ACCT_INPUT_GIGAWORDS: u8 = ext::ACCT_INPUT_GIGAWORDS_TYPE;
    pub const ACCT_OUTPUT_GIGAWORDS: u8 = ext::ACCT_OUTPUT_GIGAWORDS_TYPE;
    pub const EVENT_TIMESTAMP: u8 = ext::EVENT_TIMESTAMP_TYPE;
    pub const MESSAGE_AUTHENTICATOR: u8 = ext::MESSAGE_AUTHENTICATOR_TYPE;
    pub const ACCT_INTERIM_INTERVAL: u8 = ext::ACCT_INTERIM_INTERVAL_TYPE;
    pub const ERROR_CAUSE: u8 = dynamic::ERROR_CAUSE_TYPE;
}

/// Vendors whose attributes the agent reads.
pub const VENDOR_WISPR: u32 = 14122;
pub const VENDOR_CHILLISPOT: u32 = 14559;

// The vendors' dictionaries are not in the `radius` crate: their numbers
// are written here, as the vendors' dictionaries (and FreeRADIUS's) have them.

/// WISPr attributes (vendor 14122).
pub mod wispr {
    pub const BANDWIDTH_MAX_UP: u8 = 7;
    pub const BANDWIDTH_MAX_DOWN: u8 = 8;
    pub const SESSION_TERMINATE_TIME: u8 = 9;
}

/// ChilliSpot attributes (vendor 14559), as CoovaChilli's dictionary has them.
pub mod chilli {
    pub const MAX_INPUT_OCTETS: u8 = 1;
    pub const MAX_OUTPUT_OCTETS: u8 = 2;
    pub const MAX_TOTAL_OCTETS: u8 = 3;
    pub const BANDWIDTH_MAX_UP: u8 = 4;
    pub const BANDWIDTH_MAX_DOWN: u8 = 5;
    pub const MAX_INPUT_GIGAWORDS: u8 = 21;
    pub const MAX_OUTPUT_GIGAWORDS: u8 = 22;
    pub const MAX_TOTAL_GIGAWORDS: u8 = 23;
}

const HEADER: usize = 20;

/// Why a message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("the message is {0} bytes: shorter than a RADIUS header or than its own length field")]
    Short(usize),
    #[error("the message's attributes do not add up to its length")]
    Attributes,
    #[error("the message's authenticator does not match the shared secret: a wrong secret, or a forgery")]
    Authenticator,
    #[error("the message carries no Message-Authenticator, which this agent requires (RFC 3579; the BlastRADIUS defence)")]
    MissingMessageAuthenticator,
    #[error("the message's Message-Authenticator does not match the shared secret")]
    MessageAuthenticator,
    #[error("the message is not an answer to the request (identifier {got}, expected {want})")]
    Identifier { got: u8, want: u8 },
    #[error("cannot encode the message: {0}")]
    Encode(String),
}

fn hmac_md5(secret: &[u8], bytes: &[u8]) -> [u8; 16] {
    let mut mac =
        <Hmac<Md5> as Mac>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(bytes);
    mac.finalize().into_bytes().into()
}

/// Where each attribute of a message starts (type, offset of its value, value
/// length), or an error when they do not tile the message exactly. Written
/// here: the Message-Authenticator is checked over the raw bytes, at its
/// offset, before the `radius` crate decodes (and drops the positions).
fn walk(bytes: &[u8]) -> Result<Vec<(u8, usize, usize)>, CodecError> {
    let mut out = Vec::new();
    let mut at = HEADER;
    while at < bytes.len() {
        if at + 2 > bytes.len() {
            return Err(CodecError::Attributes);
        }
        let len = bytes[at + 1] as usize;
        if len < 2 || at + len > bytes.len() {
            return Err(CodecError::Attributes);
        }
        out.push((bytes[at], at + 2, len - 2));
        at += len;
    }
    Ok(out)
}

/// The message's bytes up to its length field.
fn framed(bytes: &[u8]) -> Result<&[u8], CodecError> {
    if bytes.len() < HEADER {
        return Err(CodecError::Short(bytes.len()));
    }
    let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
    if len < HEADER || len > bytes.len() {
        return Err(CodecError::Short(bytes.len()));
    }
    Ok(&bytes[..len])
}

/// Whether the Message-Authenticator of `bytes` (if it has one) is right when
/// computed with `auth_field` in the authenticator's place. `Ok(false)`: none.
fn check_message_authenticator(
    bytes: &[u8],
    auth_field: &[u8; 16],
    secret: &[u8],
) -> Result<bool, CodecError> {
    let attrs = walk(bytes)?;
    let mut found = None;
    for (typ, at, len) in attrs {
        if typ == attr::MESSAGE_AUTHENTICATOR {
            if len != 16 || found.is_some() {
                return Err(CodecError::MessageAuthenticator);
            }
            found = Some(at);
        }
    }
    let Some(at) = found else {
        return Ok(false);
    };
    let mut copy = bytes.to_vec();
    copy[4..HEADER].copy_from_slice(auth_field);
    copy[at..at + 16].fill(0);
    let want = hmac_md5(secret, &copy);
    // Compare every byte whatever the first difference.
    let diff = want
        .iter()
        .zip(&bytes[at..at + 16])
        .fold(0u8, |d, (a, b)| d | (a ^ b));
    if diff == 0 {
        Ok(true)
    } else {
        Err(CodecError::MessageAuthenticator)
    }
}

/// Encodes `packet` with a Message-Authenticator as its last attribute: over
/// the message with the request authenticator in place (Access-Request,
/// Status-Server and every response, whose `packet` carries the request's
/// authenticator) or sixteen zeros (Accounting, CoA and Disconnect requests).
pub fn encode_signed(mut packet: Packet) -> Result<Vec<u8>, CodecError> {
    let ma = attr::MESSAGE_AUTHENTICATOR;
    packet.delete(ma);
    packet.add(AVP::from_bytes(ma, &[0u8; 16]));
    let mut bytes = packet
        .encode()
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let zeros_in_place = matches!(
        packet.get_code(),
        Code::AccountingRequest | Code::CoARequest | Code::DisconnectRequest
    );
    if zeros_in_place {
        bytes[4..HEADER].fill(0);
    } else {
        bytes[4..HEADER].copy_from_slice(packet.get_authenticator());
    }
    let value = hmac_md5(packet.get_secret(), &bytes);
    packet.delete(ma);
    packet.add(AVP::from_bytes(ma, &value));
    packet
        .encode()
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Checks an answer to `request` (both as on the wire) and decodes it: the
/// identifier, the response authenticator, and the Message-Authenticator,
/// which must be there when `require_ma`.
pub fn open_response(
    bytes: &[u8],
    request: &[u8],
    secret: &[u8],
    require_ma: bool,
) -> Result<Packet, CodecError> {
    let bytes = framed(bytes)?;
    let request = framed(request)?;
    if bytes[1] != request[1] {
        return Err(CodecError::Identifier {
            got: bytes[1],
            want: request[1],
        });
    }
    if !Packet::is_authentic_response(bytes, request, secret) {
        return Err(CodecError::Authenticator);
    }
    let mut auth = [0u8; 16];
    auth.copy_from_slice(&request[4..HEADER]);
    if !check_message_authenticator(bytes, &auth, secret)? && require_ma {
        return Err(CodecError::MissingMessageAuthenticator);
    }
    Packet::decode(bytes, secret).map_err(|_| CodecError::Attributes)
}

/// Checks a CoA or Disconnect request (RFC 5176: the request authenticator
/// over sixteen zeros, and a Message-Authenticator, required) and decodes it.
pub fn open_request(bytes: &[u8], secret: &[u8]) -> Result<Packet, CodecError> {
    let bytes = framed(bytes)?;
    walk(bytes)?;
    if !Packet::is_authentic_request(bytes, secret) {
        return Err(CodecError::Authenticator);
    }
    if !check_message_authenticator(bytes, &[0u8; 16], secret)? {
        return Err(CodecError::MissingMessageAuthenticator);
    }
    Packet::decode(bytes, secret).map_err(|_| CodecError::Attributes)
}

/// A vendor attribute (RFC 2865 5.26, the recommended layout: one
/// vendor type, length and value after the vendor id).
pub fn vendor_avp(vendor: u32, typ: u8, value: &[u8]) -> AVP {
    let mut v = Vec::with_capacity(6 + value.len());
    v.extend_from_slice(&vendor.to_be_bytes());
    v.push(typ);
    v.push((value.len() + 2) as u8);
    v.extend_from_slice(value);
    AVP::from_bytes(attr::VENDOR_SPECIFIC, &v)
}

/// How an attribute is wrong: RFC 5176 answers the first with
/// Invalid-Request (404), the second with Invalid-Attribute-Value (407).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Its length is not its type's, or it appears more often than allowed.
    Length,
    /// Its length is right but its value is not one the agent can take.
    Value,
}

/// An attribute of a server's message that the agent reads but that is not
/// what its RFC or vendor dictionary says it is. RFC 2865 (5): such an
/// Access-Accept counts as an Access-Reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} {problem}")]
pub struct InvalidAttribute {
    /// The attribute's dictionary name, e.g. `Session-Timeout`.
    pub name: &'static str,
    pub problem: String,
    pub fault: Fault,
}

impl InvalidAttribute {
    pub fn length(name: &'static str, problem: impl Into<String>) -> Self {
        Self {
            name,
            problem: problem.into(),
            fault: Fault::Length,
        }
    }

    pub fn value(name: &'static str, problem: impl Into<String>) -> Self {
        Self {
            name,
            problem: problem.into(),
            fault: Fault::Value,
        }
    }
}

/// The dictionary name of an attribute the agent reads.
pub fn name(typ: u8) -> &'static str {
    match typ {
        attr::USER_NAME => "User-Name",
        attr::REPLY_MESSAGE => "Reply-Message",
        attr::STATE => "State",
        attr::CLASS => "Class",
        attr::VENDOR_SPECIFIC => "Vendor-Specific",
        attr::SESSION_TIMEOUT => "Session-Timeout",
        attr::IDLE_TIMEOUT => "Idle-Timeout",
        attr::CALLING_STATION_ID => "Calling-Station-Id",
        attr::NAS_IDENTIFIER => "NAS-Identifier",
        attr::ACCT_SESSION_ID => "Acct-Session-Id",
        attr::ACCT_INTERIM_INTERVAL => "Acct-Interim-Interval",
        _ => "attribute",
    }
}

/// The dictionary name of a vendor attribute the agent reads, if it is one.
pub fn vendor_name(vendor: u32, typ: u8) -> Option<&'static str> {
    Some(match (vendor, typ) {
        (VENDOR_WISPR, wispr::BANDWIDTH_MAX_UP) => "WISPr-Bandwidth-Max-Up",
        (VENDOR_WISPR, wispr::BANDWIDTH_MAX_DOWN) => "WISPr-Bandwidth-Max-Down",
        (VENDOR_WISPR, wispr::SESSION_TERMINATE_TIME) => "WISPr-Session-Terminate-Time",
        (VENDOR_CHILLISPOT, chilli::MAX_INPUT_OCTETS) => "ChilliSpot-Max-Input-Octets",
        (VENDOR_CHILLISPOT, chilli::MAX_OUTPUT_OCTETS) => "ChilliSpot-Max-Output-Octets",
        (VENDOR_CHILLISPOT, chilli::MAX_TOTAL_OCTETS) => "ChilliSpot-Max-Total-Octets",
        (VENDOR_CHILLISPOT, chilli::BANDWIDTH_MAX_UP) => "ChilliSpot-Bandwidth-Max-Up",
        (VENDOR_CHILLISPOT, chilli::BANDWIDTH_MAX_DOWN) => "ChilliSpot-Bandwidth-Max-Down",
        (VENDOR_CHILLISPOT, chilli::MAX_INPUT_GIGAWORDS) => "ChilliSpot-Max-Input-Gigawords",
        (VENDOR_CHILLISPOT, chilli::MAX_OUTPUT_GIGAWORDS) => "ChilliSpot-Max-Output-Gigawords",
        (VENDOR_CHILLISPOT, chilli::MAX_TOTAL_GIGAWORDS) => "ChilliSpot-Max-Total-Gigawords",
        _ => return None,
    })
}

/// Whether the agent reads this vendor's attributes (and so their layout
/// must be the one RFC 2865 5.26 recommends).
fn known_vendor(vendor: u32) -> bool {
    matches!(vendor, VENDOR_WISPR | VENDOR_CHILLISPOT)
}

/// Every vendor attribute of a message as (vendor, type, value); one
/// Vendor-Specific attribute may carry several. A Vendor-Specific too short
/// for a vendor id and one sub-attribute, or one of the vendors the agent
/// reads whose sub-attributes do not fill it exactly, is an error; other
/// vendors may lay theirs out otherwise, and what does not parse of them is
/// left out. Walked here: the `radius` crate hands a Vendor-Specific over as
/// opaque bytes, with no check of its sub-attributes.
pub fn vendor_attrs(packet: &Packet) -> Result<Vec<(u32, u8, Vec<u8>)>, InvalidAttribute> {
    let mut out = Vec::new();
    for avp in packet.lookup_all(attr::VENDOR_SPECIFIC) {
        let v = avp.encode_bytes();
        if v.len() < 5 {
            return Err(InvalidAttribute::length(
                name(attr::VENDOR_SPECIFIC),
                format!(
                    "has {} bytes: at least 5 (a vendor id and a sub-attribute) are needed",
                    v.len()
                ),
            ));
        }
        let vendor = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
        let strict = known_vendor(vendor);
        let mut at = 4;
        while at < v.len() {
            let len = v.get(at + 1).map_or(0, |&l| l as usize);
            if at + 2 > v.len() || len < 2 || at + len > v.len() {
                if strict {
                    let what = vendor_name(vendor, v[at]).unwrap_or("Vendor-Specific");
                    return Err(InvalidAttribute::length(
                        what,
                        format!(
                            "(vendor {vendor}) has a sub-attribute length that does not fit its Vendor-Specific attribute"
                        ),
                    ));
                }
                break;
            }
            out.push((vendor, v[at], v[at + 2..at + len].to_vec()));
            at += len;
        }
    }
    Ok(out)
}

/// The one value of an attribute that may appear at most once.
pub fn at_most_one<T>(
    mut values: Vec<T>,
    name: &'static str,
) -> Result<Option<T>, InvalidAttribute> {
    if values.len() > 1 {
        return Err(InvalidAttribute::length(
            name,
            format!("appears {} times: at most once is allowed", values.len()),
        ));
    }
    Ok(values.pop())
}

/// A 32-bit integer attribute's value: none when it is absent, an error when
/// it is not 4 bytes long or appears more than once.
pub fn int(packet: &Packet, typ: u8) -> Result<Option<u32>, InvalidAttribute> {
    let values = packet
        .lookup_all(typ)
        .iter()
        .map(|a| be_u32(name(typ), &a.encode_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    at_most_one(values, name(typ))
}

/// Every value of a string attribute (Class, State): each at least one byte.
pub fn octets(packet: &Packet, typ: u8) -> Result<Vec<Vec<u8>>, InvalidAttribute> {
    packet
        .lookup_all(typ)
        .iter()
        .map(|a| {
            let v = a.encode_bytes();
            if v.is_empty() {
                Err(InvalidAttribute::length(
                    name(typ),
                    "is empty: it must have at least one byte",
                ))
            } else {
                Ok(v)
            }
        })
        .collect()
}

/// Every value of a text attribute: each at least one byte, and UTF-8
/// (RFC 2865 5: "text").
pub fn texts(packet: &Packet, typ: u8) -> Result<Vec<String>, InvalidAttribute> {
    octets(packet, typ)?
        .into_iter()
        .map(|v| {
            String::from_utf8(v)
                .map_err(|_| InvalidAttribute::value(name(typ), "is not UTF-8 text"))
        })
        .collect()
}

/// A text attribute's value (lossy UTF-8), for messages nothing depends on.
pub fn text(packet: &Packet, typ: u8) -> Option<String> {
    packet
        .lookup(typ)
        .map(|a| String::from_utf8_lossy(&a.encode_bytes()).into_owned())
}

/// A 32-bit integer value of the attribute `name`: exactly 4 bytes.
pub fn be_u32(name: &'static str, v: &[u8]) -> Result<u32, InvalidAttribute> {
    let bytes: [u8; 4] = v.try_into().map_err(|_| {
        InvalidAttribute::length(
            name,
            format!(
                "has {} bytes where an integer has 4 (RFC 2865 section 5)",
                v.len()
            ),
        )
    })?;
    Ok(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"testing123";

    fn request(code: Code) -> Packet {
        let mut p = Packet::new(code, SECRET);
        p.add(AVP::from_string(attr::USER_NAME, "alice"));
        p
    }

    #[test]
    fn a_signed_access_request_carries_a_message_authenticator_that_checks() {
        let bytes = encode_signed(request(Code::AccessRequest)).unwrap();
        let mut auth = [0u8; 16];
        auth.copy_from_slice(&bytes[4..20]);
        assert_eq!(check_message_authenticator(&bytes, &auth, SECRET), Ok(true));
        assert_eq!(
            check_message_authenticator(&bytes, &auth, b"other"),
            Err(CodecError::MessageAuthenticator)
        );
    }

    #[test]
    fn a_signed_accounting_request_is_authentic_and_its_message_authenticator_checks() {
        let bytes = encode_signed(request(Code::AccountingRequest)).unwrap();
        assert!(Packet::is_authentic_request(&bytes, SECRET));
        assert!(open_request(&bytes, SECRET).is_ok());
        let mut tampered = bytes.clone();
        let n = tampered.len();
        tampered[n - 20] ^= 1;
        assert!(open_request(&tampered, SECRET).is_err());
    }

    #[test]
    fn a_response_is_checked_against_its_request_and_needs_a_message_authenticator() {
        let req = request(Code::AccessRequest);
        let req_bytes = encode_signed(req.clone()).unwrap();
        let sent = Packet::decode(&req_bytes, SECRET).unwrap();
        let accept = sent.make_response_packet(Code::AccessAccept);
        let signed = encode_signed(accept.clone()).unwrap();
        assert!(open_response(&signed, &req_bytes, SECRET, true).is_ok());
        // The same answer without a Message-Authenticator: refused when required.
        let bare = accept.encode().unwrap();
        assert_eq!(
            open_response(&bare, &req_bytes, SECRET, true).err(),
            Some(CodecError::MissingMessageAuthenticator)
        );
        assert!(open_response(&bare, &req_bytes, SECRET, false).is_ok());
        // Signed with another secret.
        let mut other = Packet::decode(&req_bytes, b"wrong").unwrap();
        other = other.make_response_packet(Code::AccessAccept);
        let forged = encode_signed(other).unwrap();
        assert_eq!(
            open_response(&forged, &req_bytes, SECRET, true).err(),
            Some(CodecError::Authenticator)
        );
    }

    #[test]
    fn vendor_attributes_come_back_as_they_were_put() {
        let mut p = Packet::new(Code::AccessAccept, SECRET);
        p.add(vendor_avp(
            VENDOR_CHILLISPOT,
            chilli::MAX_TOTAL_OCTETS,
            &7u32.to_be_bytes(),
        ));
        p.add(vendor_avp(
            VENDOR_WISPR,
            wispr::SESSION_TERMINATE_TIME,
            b"2026-01-01T00:00:00Z",
        ));
        let got = vendor_attrs(&p).unwrap();
        assert_eq!(got[0], (VENDOR_CHILLISPOT, 3, 7u32.to_be_bytes().to_vec()));
        assert_eq!(got[1].2, b"2026-01-01T00:00:00Z".to_vec());
    }

    fn with(typ: u8, value: &[u8]) -> Packet {
        let mut p = Packet::new(Code::AccessAccept, SECRET);
        p.add(AVP::from_bytes(typ, value));
        p
    }

    #[test]
    fn an_integer_attribute_of_any_length_but_four_is_refused_with_its_name() {
        for (typ, name) in [
            (attr::SESSION_TIMEOUT, "Session-Timeout"),
            (attr::IDLE_TIMEOUT, "Idle-Timeout"),
            (attr::ACCT_INTERIM_INTERVAL, "Acct-Interim-Interval"),
        ] {
            assert_eq!(int(&with(typ, &[0, 0, 14, 16]), typ), Ok(Some(3600)));
            for n in [0, 1, 2, 3, 5, 8] {
                let err = int(&with(typ, &vec![1; n]), typ).unwrap_err();
                assert_eq!((err.name, err.fault), (name, Fault::Length), "{n} bytes");
                assert!(err.to_string().contains(&format!("has {n} bytes")), "{err}");
            }
        }
    }

    #[test]
    fn an_integer_attribute_given_twice_is_refused() {
        let mut p = with(attr::SESSION_TIMEOUT, &60u32.to_be_bytes());
        p.add(AVP::from_u32(attr::SESSION_TIMEOUT, 86400));
        let err = int(&p, attr::SESSION_TIMEOUT).unwrap_err();
        assert_eq!((err.name, err.fault), ("Session-Timeout", Fault::Length));
    }

    #[test]
    fn a_vendor_integer_of_any_length_but_four_is_refused_with_its_name() {
        let name = vendor_name(VENDOR_CHILLISPOT, chilli::MAX_TOTAL_OCTETS).unwrap();
        assert_eq!(name, "ChilliSpot-Max-Total-Octets");
        for n in [0, 1, 2, 3, 5] {
            let mut p = Packet::new(Code::AccessAccept, SECRET);
            p.add(vendor_avp(
                VENDOR_CHILLISPOT,
                chilli::MAX_TOTAL_OCTETS,
                &vec![1; n],
            ));
            let (_, _, value) = vendor_attrs(&p).unwrap().remove(0);
            let err = be_u32(name, &value).unwrap_err();
            assert_eq!((err.name, err.fault), (name, Fault::Length), "{n} bytes");
        }
        assert_eq!(be_u32(name, &[0, 0, 1, 0]), Ok(256));
    }

    #[test]
    fn a_vendor_attribute_that_does_not_fill_its_vendor_specific_is_refused_for_the_vendors_read() {
        // ChilliSpot-Max-Total-Octets saying 6 bytes of value in a 3-byte space.
        let mut v = VENDOR_CHILLISPOT.to_be_bytes().to_vec();
        v.extend_from_slice(&[chilli::MAX_TOTAL_OCTETS, 8, 0, 1, 2]);
        let err = vendor_attrs(&with(attr::VENDOR_SPECIFIC, &v)).unwrap_err();
        assert_eq!(
            (err.name, err.fault),
            ("ChilliSpot-Max-Total-Octets", Fault::Length)
        );
        // A sub-attribute length below 2, and one byte left over.
        for tail in [&[wispr::BANDWIDTH_MAX_DOWN, 1][..], &[9][..]] {
            let mut v = VENDOR_WISPR.to_be_bytes().to_vec();
            v.extend_from_slice(&[wispr::BANDWIDTH_MAX_UP, 6, 0, 0, 0, 1]);
            v.extend_from_slice(tail);
            assert!(vendor_attrs(&with(attr::VENDOR_SPECIFIC, &v)).is_err());
        }
        // A Vendor-Specific too short for a vendor id and a sub-attribute.
        for n in [0, 3, 4] {
            let err = vendor_attrs(&with(attr::VENDOR_SPECIFIC, &vec![0; n])).unwrap_err();
            assert_eq!((err.name, err.fault), ("Vendor-Specific", Fault::Length));
        }
        // Another vendor may lay its attributes out its own way.
        let mut v = 9u32.to_be_bytes().to_vec();
        v.extend_from_slice(b"cisco-avpair=x");
        assert!(vendor_attrs(&with(attr::VENDOR_SPECIFIC, &v)).is_ok());
    }

    #[test]
    fn an_empty_string_attribute_and_text_that_is_not_utf8_are_refused() {
        let err = octets(&with(attr::CLASS, b""), attr::CLASS).unwrap_err();
        assert_eq!((err.name, err.fault), ("Class", Fault::Length));
        assert_eq!(
            octets(&with(attr::CLASS, b"plan"), attr::CLASS),
            Ok(vec![b"plan".to_vec()])
        );
        let err = texts(
            &with(attr::REPLY_MESSAGE, &[0xff, 0xfe]),
            attr::REPLY_MESSAGE,
        )
        .unwrap_err();
        assert_eq!((err.name, err.fault), ("Reply-Message", Fault::Value));
        let err = texts(&with(attr::USER_NAME, b""), attr::USER_NAME).unwrap_err();
        assert_eq!((err.name, err.fault), ("User-Name", Fault::Length));
    }

    proptest::proptest! {
        /// Whatever arrives, the checks answer without a panic, and nothing
        /// random passes them.
        #[test]
        fn random_bytes_are_refused_without_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let request = encode_signed(request(Code::AccessRequest)).unwrap();
            proptest::prop_assert!(open_request(&bytes, SECRET).is_err());
            proptest::prop_assert!(open_response(&bytes, &request, SECRET, true).is_err());
        }
    }

    #[test]
    fn truncated_and_malformed_messages_are_refused() {
        let bytes = encode_signed(request(Code::AccountingRequest)).unwrap();
        for n in [0, 5, 19] {
            assert!(matches!(
                open_request(&bytes[..n], SECRET),
                Err(CodecError::Short(_))
            ));
        }
        let mut bad = bytes.clone();
        bad[21] = 200; // the first attribute's length runs past the end
        assert!(open_request(&bad, SECRET).is_err());
    }
}
