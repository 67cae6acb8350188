//! A streaming CSV record reader with hard memory bounds.
//!
//! Built on `csv-core`: the input buffer, the record buffer and the raw-line copy are all capped,
//! so an unbalanced quote or a 2 GB field costs at most `max_record_bytes` of memory and yields
//! one oversized record instead of exhausting the process.

use std::io::{self, Read};

use csv_core::{ReadRecordResult, Reader, ReaderBuilder};

const INPUT_BUF: usize = 64 * 1024;
/// Bytes of a record's raw text kept for dead letters.
pub const RAW_CAP: usize = 4096;

/// Limits of the reader and of one file.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest record (sum of field bytes) kept; longer records are reported as oversized.
    pub max_record_bytes: usize,
    /// Most fields per record; more are reported as oversized.
    pub max_fields: usize,
    /// Most data rows in one file; a longer file fails as a whole.
    pub max_rows: u64,
    /// Earliest business date a row may carry.
    pub earliest_date: chrono::NaiveDate,
    /// Latest business date a row may carry, in days after the day the file is read.
    pub max_days_ahead: u32,
}

/// The earliest business date accepted by default.
pub const EARLIEST_DATE: chrono::NaiveDate = match chrono::NaiveDate::from_ymd_opt(2000, 1, 1) {
    Some(d) => d,
    None => panic!("2000-01-01 is a date"),
};

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: 64 * 1024,
            max_fields: 256,
            max_rows: 2_000_000,
            earliest_date: EARLIEST_DATE,
            max_days_ahead: 31,
        }
    }
}

/// Why a record could not be kept whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    Bytes,
    Fields,
}

/// Where the current record came from.
#[derive(Debug, Clone, Copy)]
pub struct RecordInfo {
    /// 1-based line the record starts on.
    pub line: u64,
    /// Set when the record exceeded a limit; its fields are then not available.
    pub oversized: Option<Oversize>,
}

pub struct RecordReader<R> {
    src: R,
    core: Reader,
    limits: Limits,
    input: Box<[u8]>,
    pos: usize,
    filled: usize,
    eof: bool,
    started: bool,
    out: Vec<u8>,
    out_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
    raw: Vec<u8>,
    raw_truncated: bool,
    /// Newlines consumed so far.
    newlines: u64,
    /// Bytes consumed so far (after decompression).
    bytes: u64,
}

impl<R: Read> RecordReader<R> {
    pub fn new(src: R, limits: Limits) -> Self {
        RecordReader {
            src,
            core: ReaderBuilder::new().build(),
            limits,
            input: vec![0; INPUT_BUF].into_boxed_slice(),
            pos: 0,
            filled: 0,
            eof: false,
            started: false,
            out: vec![0; 4096.min(limits.max_record_bytes.max(1))],
            out_len: 0,
            ends: vec![0; 32.min(limits.max_fields.max(1))],
            ends_len: 0,
            raw: Vec::with_capacity(256),
            raw_truncated: false,
            newlines: 0,
            bytes: 0,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.pos < self.filled || self.eof {
            return Ok(());
        }
        self.pos = 0;
        self.filled = 0;
        loop {
            match self.src.read(&mut self.input) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    self.filled = n;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if !self.started {
            self.started = true;
            // A UTF-8 byte-order mark is not part of the first header name.
            while self.filled < 3 && !self.eof {
                let n = self.src.read(&mut self.input[self.filled..])?;
                if n == 0 {
                    self.eof = true;
                }
                self.filled += n;
            }
            if self.input[..self.filled].starts_with(&[0xEF, 0xBB, 0xBF]) {
                self.pos = 3;
                self.bytes += 3;
            }
        }
        Ok(())
    }

    /// Reads the next record. `Ok(None)` at the end of the input.
    pub fn next_record(&mut self) -> io::Result<Option<RecordInfo>> {
        self.out_len = 0;
        self.ends_len = 0;
        self.raw.clear();
        self.raw_truncated = false;
        let mut oversized = None;
        let line_before = self.newlines;
        loop {
            self.fill()?;
            let input = &self.input[self.pos..self.filled];
            let (res, nin, nout, nend) = self.core.read_record(
                input,
                &mut self.out[self.out_len..],
                &mut self.ends[self.ends_len..],
            );
            let consumed = &input[..nin];
            self.newlines += consumed.iter().filter(|&&b| b == b'\n').count() as u64;
            let room = RAW_CAP.saturating_sub(self.raw.len());
            if consumed.len() > room {
                self.raw_truncated = true;
            }
            self.raw
                .extend_from_slice(&consumed[..consumed.len().min(room)]);
            self.pos += nin;
            self.bytes += nin as u64;
            self.out_len += nout;
            self.ends_len += nend;
            match res {
                ReadRecordResult::InputEmpty => continue,
                ReadRecordResult::OutputFull => {
                    if self.out.len() < self.limits.max_record_bytes {
                        let new = (self.out.len() * 2).min(self.limits.max_record_bytes);
                        self.out.resize(new, 0);
                    } else {
                        // Keep reading to the end of the record, discarding its bytes.
                        oversized.get_or_insert(Oversize::Bytes);
                        self.out_len = 0;
                    }
                }
                ReadRecordResult::OutputEndsFull => {
                    if self.ends.len() < self.limits.max_fields {
                        let new = (self.ends.len() * 2).min(self.limits.max_fields);
                        self.ends.resize(new, 0);
                    } else {
                        oversized.get_or_insert(Oversize::Fields);
                        self.ends_len = 0;
                    }
                }
                ReadRecordResult::Record => {
                    let line = line_before + 1 + self.leading_newlines();
                    self.trim_raw();
                    return Ok(Some(RecordInfo { line, oversized }));
                }
                ReadRecordResult::End => return Ok(None),
            }
        }
    }

    /// Blank lines skipped before the record started.
    fn leading_newlines(&self) -> u64 {
        self.raw
            .iter()
            .take_while(|&&b| b == b'\n' || b == b'\r')
            .filter(|&&b| b == b'\n')
            .count() as u64
    }

    fn trim_raw(&mut self) {
        let start = self
            .raw
            .iter()
            .take_while(|&&b| b == b'\n' || b == b'\r')
            .count();
        let mut end = self.raw.len();
        if !self.raw_truncated {
            while end > start && (self.raw[end - 1] == b'\n' || self.raw[end - 1] == b'\r') {
                end -= 1;
            }
        }
        self.raw.copy_within(start..end, 0);
        self.raw.truncate(end - start);
    }

    /// Number of fields of the current record.
    pub fn len(&self) -> usize {
        self.ends_len
    }

    pub fn is_empty(&self) -> bool {
        self.ends_len == 0
    }

    /// Field `i` of the current record, as bytes.
    pub fn field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.out[start..self.ends[i]]
    }

    /// The raw text of the current record (capped at [`RAW_CAP`]) and whether it was cut.
    pub fn raw(&self) -> (&[u8], bool) {
        (&self.raw, self.raw_truncated)
    }

    /// Bytes read so far from the (decompressed) input.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], limits: Limits) -> Vec<(u64, Option<Oversize>, Vec<String>, String)> {
        let mut r = RecordReader::new(input, limits);
        let mut v = Vec::new();
        while let Some(info) = r.next_record().unwrap() {
            let fields = if info.oversized.is_some() {
                vec![]
            } else {
                (0..r.len())
                    .map(|i| String::from_utf8_lossy(r.field(i)).into_owned())
                    .collect()
            };
            v.push((
                info.line,
                info.oversized,
                fields,
                String::from_utf8_lossy(r.raw().0).into_owned(),
            ));
        }
        v
    }

    #[test]
    fn bom_crlf_quotes_and_embedded_newlines() {
        let input =
            b"\xEF\xBB\xBFsku,name\r\nA1,\"two\r\nlines, and \"\"quotes\"\"\"\r\n\r\nB2,plain\r\n";
        let recs = all(input, Limits::default());
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].2, vec!["sku", "name"]);
        assert_eq!(recs[0].0, 1);
        assert_eq!(recs[1].2, vec!["A1", "two\r\nlines, and \"quotes\""]);
        assert_eq!(recs[1].0, 2);
        assert_eq!(recs[1].3, "A1,\"two\r\nlines, and \"\"quotes\"\"\"");
        assert_eq!(recs[2].0, 5, "blank line 4 is skipped, B2 is on line 5");
        assert_eq!(recs[2].2, vec!["B2", "plain"]);
    }

    #[test]
    fn last_record_without_newline() {
        let recs = all(b"a,b\nc,d", Limits::default());
        assert_eq!(recs[1].2, vec!["c", "d"]);
        assert_eq!(recs[1].0, 2);
    }

    #[test]
    fn unbalanced_quote_is_one_oversized_record_not_unbounded_memory() {
        let mut input = b"sku,name\nA,\"open quote\n".to_vec();
        for _ in 0..100_000 {
            input.extend_from_slice(b"B,more text here\n");
        }
        let limits = Limits {
            max_record_bytes: 1024,
            max_fields: 16,
            ..Limits::default()
        };
        let mut r = RecordReader::new(&input[..], limits);
        r.next_record().unwrap().unwrap();
        let info = r.next_record().unwrap().unwrap();
        assert_eq!(info.line, 2);
        assert_eq!(info.oversized, Some(Oversize::Bytes));
        assert!(r.raw().1, "raw copy is capped");
        assert!(r.raw().0.len() <= RAW_CAP);
        assert!(r.next_record().unwrap().is_none());
        assert!(r.out.len() <= 1024);
    }

    #[test]
    fn too_many_fields_is_oversized() {
        let row = vec!["x"; 40].join(",");
        let recs = all(
            format!("h\n{row}\nok\n").as_bytes(),
            Limits {
                max_record_bytes: 1024,
                max_fields: 8,
                ..Limits::default()
            },
        );
        assert_eq!(recs[1].1, Some(Oversize::Fields));
        assert_eq!(recs[2].2, vec!["ok"]);
        assert_eq!(recs[2].0, 3);
    }
}
