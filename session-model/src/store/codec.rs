//! Compact binary encoding of session rows in redb (schema version 1).
//!
//! Layout, little endian: `format: u8 (=3) | id u64 | device_id i64 | type u8 |
//! time_secs u64 | data_bytes u64 | time_cons u64 | data_cons_bytes u64 |
//! started_at opt<i64> | exp_days opt<u32> | down_mbits i32 | up_mbits i32 |
//! use_global_speed u8 | created_at i64 | ended_at opt<i64> | provider: u16 len + UTF-8 |
//! run opt<charged_to_ms i64 | boot u64 | meter opt<epoch u64 | bytes u64>>`,
//! where `opt<T>` is a presence byte followed by `T` when present.
//!
//! Format 3 adds the boot id to the run state; format 2 rows (without it) are
//! read with boot 0 (unknown), format 1 rows (no run state) with `run = None`.

use crate::{MeterMark, RunState, SessionData, SessionRecord, SessionType, StoreError};

/// Row format written.
const FORMAT: u8 = 3;
/// Row format without the boot id in the run state.
const FORMAT_NO_BOOT: u8 = 2;
/// Oldest row format still read: no run state.
const FORMAT_NO_RUN: u8 = 1;

pub(crate) fn encode_session(r: &SessionRecord) -> Result<Vec<u8>, StoreError> {
    let mut b = Vec::with_capacity(96 + r.data.provider.len());
    encode_session_into(&mut b, r)?;
    Ok(b)
}

/// [`encode_session`], appended to `b`.
pub(crate) fn encode_session_into(b: &mut Vec<u8>, r: &SessionRecord) -> Result<(), StoreError> {
    let d = &r.data;
    let provider = d.provider.as_bytes();
    let plen = u16::try_from(provider.len())
        .map_err(|_| StoreError::Corrupt(format!("provider name of session {} too long", r.id)))?;
    b.push(FORMAT);
    b.extend_from_slice(&r.id.to_le_bytes());
    b.extend_from_slice(&r.device_id.to_le_bytes());
    b.push(d.session_type as u8);
    for v in [d.time_secs, d.data_bytes, d.time_cons, d.data_cons_bytes] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    put_opt_i64(b, d.started_at);
    match d.exp_days {
        Some(v) => {
            b.push(1);
            b.extend_from_slice(&v.to_le_bytes());
        }
        None => b.push(0),
    }
    b.extend_from_slice(&d.down_mbits.to_le_bytes());
    b.extend_from_slice(&d.up_mbits.to_le_bytes());
    b.push(u8::from(d.use_global_speed));
    b.extend_from_slice(&d.created_at.to_le_bytes());
    put_opt_i64(b, r.ended_at);
    b.extend_from_slice(&plen.to_le_bytes());
    b.extend_from_slice(provider);
    match r.run {
        Some(run) => {
            b.push(1);
            b.extend_from_slice(&run.charged_to_ms.to_le_bytes());
            b.extend_from_slice(&run.boot.to_le_bytes());
            match run.meter {
                Some(m) => {
                    b.push(1);
                    b.extend_from_slice(&m.epoch.to_le_bytes());
                    b.extend_from_slice(&m.bytes.to_le_bytes());
                }
                None => b.push(0),
            }
        }
        None => b.push(0),
    }
    Ok(())
}

fn put_opt_i64(b: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => {
            b.push(1);
            b.extend_from_slice(&v.to_le_bytes());
        }
        None => b.push(0),
    }
}

struct Reader<'a> {
    b: &'a [u8],
    off: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.off.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or_else(|| StoreError::Corrupt("truncated session row".into()))?;
        let s = &self.b[self.off..end];
        self.off = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    fn i32(&mut self) -> Result<i32, StoreError> {
        Ok(i32::from_le_bytes(self.arr()?))
    }
    fn flag(&mut self) -> Result<bool, StoreError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(StoreError::Corrupt(format!(
                "bad presence byte {v} in session row"
            ))),
        }
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, StoreError> {
        if self.flag()? {
            Ok(Some(self.i64()?))
        } else {
            Ok(None)
        }
    }
}

pub(crate) fn decode_session(b: &[u8]) -> Result<SessionRecord, StoreError> {
    let mut r = Reader { b, off: 0 };
    let format = r.u8()?;
    if ![FORMAT, FORMAT_NO_BOOT, FORMAT_NO_RUN].contains(&format) {
        return Err(StoreError::Corrupt(format!(
            "unknown session row format {format}"
        )));
    }
    let id = r.u64()?;
    let device_id = r.i64()?;
    let session_type = SessionType::try_from(r.u8()?)
        .map_err(|e| StoreError::Corrupt(format!("session {id}: {e}")))?;
    let time_secs = r.u64()?;
    let data_bytes = r.u64()?;
    let time_cons = r.u64()?;
    let data_cons_bytes = r.u64()?;
    let started_at = r.opt_i64()?;
    let exp_days = if r.flag()? {
        Some(u32::from_le_bytes(r.arr()?))
    } else {
        None
    };
    let down_mbits = r.i32()?;
    let up_mbits = r.i32()?;
    let use_global_speed = r.flag()?;
    let created_at = r.i64()?;
    let ended_at = r.opt_i64()?;
    let plen = u16::from_le_bytes(r.arr()?) as usize;
    let provider = std::str::from_utf8(r.take(plen)?)
        .map_err(|_| StoreError::Corrupt(format!("session {id}: provider is not UTF-8")))?
        .into();
    let run = if format != FORMAT_NO_RUN && r.flag()? {
        let charged_to_ms = r.i64()?;
        let boot = if format == FORMAT_NO_BOOT {
            0
        } else {
            r.u64()?
        };
        let meter = if r.flag()? {
            Some(MeterMark {
                epoch: r.u64()?,
                bytes: r.u64()?,
            })
        } else {
            None
        };
        Some(RunState {
            charged_to_ms,
            boot,
            meter,
        })
    } else {
        None
    };
    if r.off != b.len() {
        return Err(StoreError::Corrupt(format!("session {id}: trailing bytes")));
    }
    Ok(SessionRecord {
        id,
        device_id,
        ended_at,
        run,
        data: SessionData {
            provider,
            session_type,
            time_secs,
            data_bytes,
            time_cons,
            data_cons_bytes,
            started_at,
            exp_days,
            down_mbits,
            up_mbits,
            use_global_speed,
            created_at,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_garbage() {
        let r = SessionRecord {
            id: 42,
            device_id: -3,
            ended_at: Some(99),
            run: Some(RunState {
                charged_to_ms: -7,
                boot: u64::MAX,
                meter: Some(MeterMark {
                    epoch: u64::MAX,
                    bytes: 12,
                }),
            }),
            data: SessionData {
                provider: "voucher-ü".into(),
                session_type: SessionType::TimeOrData,
                time_secs: 1,
                data_bytes: u64::MAX,
                time_cons: 3,
                data_cons_bytes: 4,
                started_at: Some(-5),
                exp_days: Some(7),
                down_mbits: 8,
                up_mbits: 9,
                use_global_speed: true,
                created_at: 10,
            },
        };
        let b = encode_session(&r).unwrap();
        assert_eq!(decode_session(&b).unwrap(), r);
        let mut none = r.clone();
        none.ended_at = None;
        none.data.started_at = None;
        none.data.exp_days = None;
        none.run = None;
        assert_eq!(
            decode_session(&encode_session(&none).unwrap()).unwrap(),
            none
        );
        let mut no_meter = r.clone();
        no_meter.run = Some(RunState {
            charged_to_ms: 5,
            boot: 77,
            meter: None,
        });
        assert_eq!(
            decode_session(&encode_session(&no_meter).unwrap()).unwrap(),
            no_meter
        );
        // A format 1 row (written before run state existed) reads as not running.
        let mut v1 = encode_session(&none).unwrap();
        assert_eq!(v1.pop(), Some(0));
        v1[0] = FORMAT_NO_RUN;
        assert_eq!(decode_session(&v1).unwrap(), none);
        // A format 2 row (no boot id) reads with boot 0: the gap is not charged.
        let mut v2 = encode_session(&no_meter).unwrap();
        let at = v2.len() - 1 - 8;
        v2.drain(at..at + 8);
        v2[0] = FORMAT_NO_BOOT;
        let mut unknown_boot = no_meter.clone();
        unknown_boot.run.as_mut().unwrap().boot = 0;
        assert_eq!(decode_session(&v2).unwrap(), unknown_boot);
        let mut unknown = b.clone();
        unknown[0] = 4;
        assert!(decode_session(&unknown).is_err());
        for cut in 0..b.len() {
            assert!(decode_session(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[17] = 9; // session type
        assert!(decode_session(&bad).is_err());
        let mut long = b.clone();
        long.push(0);
        assert!(decode_session(&long).is_err());
    }
}
