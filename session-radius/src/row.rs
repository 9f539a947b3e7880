//! An open session's row in the accounting book, in a compact binary form:
//! about a third of the bytes of the rows of JSON the book wrote before, so
//! that its page cache holds three times the rows, and an interim update
//! parses no text.
//!
//! Layout: `format: u8 (=1) | session_id v | device_id z | acct_session_id s
//! | user_name s | calling s | framed_ip: u8 0, or 1 and 4 bytes | class: v
//! count, then b each | state: u8 0, or 1 and b | started_at z | interim_secs
//! v | next_interim z | base_up v | base_down v | mark: epoch v, up v, down v
//! | last: the same`, where `v` is an unsigned LEB128 varint, `z` a zigzag
//! varint, `b` a `v` length and the bytes, `s` a `b` of UTF-8. A row that
//! starts with `{` is one of JSON, as the book wrote them before: it is read
//! as it is, and written in this form when the session's row is next written.
//! Agents that wrote JSON do not read this form: a book written here is not
//! for an older agent.

use std::net::Ipv4Addr;

use crate::acct::{OpenSession, Reading};

/// Row format written.
const FORMAT: u8 = 1;

/// `s` as a row.
pub(crate) fn encode(s: &OpenSession) -> Vec<u8> {
    let mut b = Vec::with_capacity(
        64 + s.acct_session_id.len()
            + s.user_name.len()
            + s.calling.len()
            + s.class.iter().map(|c| c.len() + 2).sum::<usize>()
            + s.state.as_ref().map_or(0, Vec::len),
    );
    b.push(FORMAT);
    put_u(&mut b, s.session_id);
    put_z(&mut b, s.device_id);
    for text in [&s.acct_session_id, &s.user_name, &s.calling] {
        put_bytes(&mut b, text.as_bytes());
    }
    match s.framed_ip {
        Some(ip) => {
            b.push(1);
            b.extend_from_slice(&ip.octets());
        }
        None => b.push(0),
    }
    put_u(&mut b, s.class.len() as u64);
    for c in &s.class {
        put_bytes(&mut b, c);
    }
    match &s.state {
        Some(state) => {
            b.push(1);
            put_bytes(&mut b, state);
        }
        None => b.push(0),
    }
    put_z(&mut b, s.started_at);
    put_u(&mut b, s.interim_secs);
    put_z(&mut b, s.next_interim);
    put_u(&mut b, s.base_up);
    put_u(&mut b, s.base_down);
    for r in [s.mark, s.last] {
        put_u(&mut b, r.epoch);
        put_u(&mut b, r.up);
        put_u(&mut b, r.down);
    }
    b
}

/// A row as the book holds it, in this form or in JSON.
pub(crate) fn decode(row: &[u8]) -> Result<OpenSession, String> {
    match row.first() {
        Some(b'{') => serde_json::from_slice(row).map_err(|e| e.to_string()),
        Some(&FORMAT) => {
            let mut r = Reader { rest: &row[1..] };
            let s = r.session()?;
            if !r.rest.is_empty() {
                return Err(format!("{} bytes past its end", r.rest.len()));
            }
            Ok(s)
        }
        Some(f) => Err(format!("unknown row format {f}")),
        None => Err("an empty row".into()),
    }
}

fn put_u(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn put_z(b: &mut Vec<u8>, v: i64) {
    put_u(b, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(b: &mut Vec<u8>, bytes: &[u8]) {
    put_u(b, bytes.len() as u64);
    b.extend_from_slice(bytes);
}

/// Reads a row's fields in turn; each error names what it could not read.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self, what: &str) -> Result<u8, String> {
        let (&first, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| format!("the row ends before its {what}"))?;
        self.rest = rest;
        Ok(first)
    }

    fn u(&mut self, what: &str) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte(what)?;
            let part = u64::from(byte & 0x7f);
            if shift == 63 && part > 1 {
                break;
            }
            v |= part << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("its {what} is longer than 64 bits"))
    }

    fn z(&mut self, what: &str) -> Result<i64, String> {
        let v = self.u(what)?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = self.u(what)?;
        if len > self.rest.len() as u64 {
            return Err(format!("its {what} runs past the row's end"));
        }
        let (bytes, rest) = self.rest.split_at(len as usize);
        self.rest = rest;
        Ok(bytes)
    }

    fn text(&mut self, what: &str) -> Result<String, String> {
        let bytes = self.bytes(what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("its {what} is not UTF-8"))
    }

    fn flag(&mut self, what: &str) -> Result<bool, String> {
        match self.byte(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("its {what} is marked {other} (0 or 1)")),
        }
    }

    fn reading(&mut self, what: &str) -> Result<Reading, String> {
        Ok(Reading {
            epoch: self.u(what)?,
            up: self.u(what)?,
            down: self.u(what)?,
        })
    }

    fn session(&mut self) -> Result<OpenSession, String> {
        let session_id = self.u("session id")?;
        let device_id = self.z("device id")?;
        let acct_session_id = self.text("Acct-Session-Id")?;
        let user_name = self.text("User-Name")?;
        let calling = self.text("Calling-Station-Id")?;
        let framed_ip = match self.flag("Framed-IP-Address")? {
            true => {
                let mut o = [0u8; 4];
                for b in &mut o {
                    *b = self.byte("Framed-IP-Address")?;
                }
                Some(Ipv4Addr::from(o))
            }
            false => None,
        };
        let count = self.u("Class count")?;
        // Each Class takes at least its length byte.
        if count > self.rest.len() as u64 {
            return Err("its Class count runs past the row's end".into());
        }
        let mut class = Vec::with_capacity(count as usize);
        for _ in 0..count {
            class.push(self.bytes("Class")?.to_vec());
        }
        let state = match self.flag("State")? {
            true => Some(self.bytes("State")?.to_vec()),
            false => None,
        };
        Ok(OpenSession {
            session_id,
            device_id,
            acct_session_id,
            user_name,
            calling,
            framed_ip,
            class,
            state,
            started_at: self.z("start")?,
            interim_secs: self.u("interim interval")?,
            next_interim: self.z("next interim update")?,
            base_up: self.u("octets up before")?,
            base_down: self.u("octets down before")?,
            mark: self.reading("start reading")?,
            last: self.reading("last reading")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn session() -> OpenSession {
        OpenSession {
            session_id: 70_000,
            device_id: 65_000,
            acct_session_id: "5A000000-00011170".into(),
            user_name: "user70000".into(),
            calling: "02-5E-00-00-FD-E8".into(),
            framed_ip: Some(Ipv4Addr::new(10, 200, 253, 232)),
            class: vec![b"plan".to_vec(), vec![0, 255]],
            state: Some(vec![1, 2, 3]),
            started_at: 1_800_000_000,
            interim_secs: 600,
            next_interim: 1_800_000_600,
            base_up: 5 << 32,
            base_down: 7,
            mark: Reading {
                epoch: 3,
                up: 1_000,
                down: 2_000,
            },
            last: Reading {
                epoch: 3,
                up: u64::MAX,
                down: 2_500,
            },
        }
    }

    #[test]
    fn a_row_reads_back_as_written_and_is_a_third_of_its_json() {
        let s = session();
        let row = encode(&s);
        assert_eq!(decode(&row).unwrap(), s);
        let json = serde_json::to_vec(&s).unwrap();
        assert!(
            row.len() * 3 <= json.len(),
            "{} bytes against {} of JSON",
            row.len(),
            json.len()
        );
    }

    #[test]
    fn a_row_of_json_as_the_book_wrote_them_before_is_read() {
        let s = session();
        assert_eq!(decode(&serde_json::to_vec(&s).unwrap()).unwrap(), s);
    }

    #[test]
    fn a_cut_or_damaged_row_is_refused_with_what_it_could_not_read() {
        let row = encode(&session());
        for len in 0..row.len() {
            assert!(decode(&row[..len]).is_err(), "cut at {len} was read");
        }
        let mut longer = row.clone();
        longer.push(0);
        assert!(decode(&longer).unwrap_err().contains("past its end"));
        let mut other = row.clone();
        other[0] = 9;
        assert!(decode(&other).unwrap_err().contains("unknown row format 9"));
        // A length that claims more than the row holds.
        let mut r = vec![FORMAT];
        put_u(&mut r, 1);
        put_z(&mut r, 1);
        put_u(&mut r, 1 << 40);
        assert!(decode(&r)
            .unwrap_err()
            .contains("Acct-Session-Id runs past"));
        // A session id whose tenth byte carries more than the 64th bit, or
        // goes on to an eleventh byte.
        for tenth in [0x02, 0x81, 0x7f] {
            let mut r = vec![FORMAT];
            r.extend([0xff; 9]);
            r.push(tenth);
            r.push(0);
            assert!(
                decode(&r).unwrap_err().contains("longer than 64 bits"),
                "tenth byte {tenth:#x}"
            );
        }
        // Its tenth byte with the 64th bit alone: u64::MAX.
        let mut r = Reader { rest: &[0xff; 9] };
        assert!(r.u("x").is_err());
        let mut bytes = vec![0xff; 9];
        bytes.push(0x01);
        let mut r = Reader { rest: &bytes };
        assert_eq!(r.u("x").unwrap(), u64::MAX);
        assert!(r.rest.is_empty());
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_or_refused_and_never_panic(
            row in proptest::collection::vec(any::<u8>(), 0..200),
            format in proptest::option::of(Just(FORMAT)),
        ) {
            let mut row = row;
            if let Some(f) = format {
                row.insert(0, f);
            }
            // What is read, written again, reads back the same.
            if let Ok(s) = decode(&row) {
                prop_assert_eq!(decode(&encode(&s)).unwrap(), s);
            }
        }

        #[test]
        fn any_session_reads_back_as_written(
            ids in (any::<u64>(), any::<i64>(), any::<i64>(), any::<u64>(), any::<i64>()),
            texts in (".{0,40}", ".{0,40}", ".{0,20}"),
            ip in proptest::option::of(any::<u32>()),
            class in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..3),
            state in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            counters in proptest::array::uniform8(any::<u64>()),
        ) {
            let s = OpenSession {
                session_id: ids.0,
                device_id: ids.1,
                acct_session_id: texts.0,
                user_name: texts.1,
                calling: texts.2,
                framed_ip: ip.map(Ipv4Addr::from),
                class,
                state,
                started_at: ids.2,
                interim_secs: ids.3,
                next_interim: ids.4,
                base_up: counters[0],
                base_down: counters[1],
                mark: Reading { epoch: counters[2], up: counters[3], down: counters[4] },
                last: Reading { epoch: counters[5], up: counters[6], down: counters[7] },
            };
            prop_assert_eq!(decode(&encode(&s)).unwrap(), s);
        }
    }
}
