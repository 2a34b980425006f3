//! The packed dataset format (`trainer pack`): one file holding every image
//! of an ImageFolder's `train/` and `val/` splits as encoded bytes, with an
//! index, read through a memory map.
//!
//! Layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `M2TPACK\0` |
//! | 8..12 | format version (1) |
//! | 12..16 | `--max-side` the images were packed with (0: unbounded) |
//! | 16..24 | record count |
//! | 24..32 | training records (the first ones; the rest are `val`) |
//! | 32..40 | index offset |
//! | 40..48 | index length |
//! | 48..52 | CRC-32 of the index |
//! | 52..60 | reserved (0) |
//! | 60..64 | CRC-32 of bytes 0..60 |
//! | 64.. | the records' encoded images (JPEG or PNG), back to back |
//! | index | class count `u32`, each class name (`u32` length, UTF-8); per record 28 bytes: offset `u64`, length `u32`, CRC-32 `u32`, label `u32`, height `u32`, width `u32`; per record its source path (`u32` length, UTF-8) |
//!
//! The file ends where the index does. Opening checks the header, both
//! checksums and every record's bounds, so a truncated or corrupt pack is a
//! data error naming what is wrong, never an out-of-bounds read; a record's
//! own checksum is checked each time it is read, and a record that fails it
//! is an unreadable image (skipped and counted like a bad file).

use crate::{Error, Result};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The first 8 bytes of every pack.
pub const MAGIC: &[u8; 8] = b"M2TPACK\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes before the first record.
pub const HEADER_LEN: usize = 64;
/// Index bytes per record, before the names.
const RECORD_LEN: usize = 28;

/// One image's entry in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// First byte of the encoded image in the file.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u32,
    /// CRC-32 of those bytes.
    pub crc: u32,
    /// Class number.
    pub label: u32,
    /// Stored image size (after `--max-side`).
    pub height: u32,
    /// Stored image width.
    pub width: u32,
    /// The file it was packed from, relative to the packed folder.
    pub source: String,
}

/// An open pack: the memory map and its checked index.
#[derive(Debug)]
pub struct Pack {
    path: PathBuf,
    map: memmap2::Mmap,
    /// The records, training split first.
    pub records: Vec<Record>,
    /// How many of the records are the training split.
    pub train_len: usize,
    /// Class names, label order.
    pub classes: Vec<String>,
    /// The `--max-side` it was packed with (0: unbounded).
    pub max_side: u32,
}

/// Whether the file at `path` starts with the pack magic.
pub fn detect(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == MAGIC)
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the index's fields in order, failing (never panicking) when they
/// run past its end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("index ends inside {what}"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32_at(self.take(4, what)?, 0))
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u32(what)? as usize;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
}

impl Pack {
    /// Opens and checks the pack at `path`.
    pub fn open(path: &Path) -> Result<Pack> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a pack changed by another process
        // while it is open is outside what the trainer guards against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |detail: String| Error::data(path, detail);
        let b = &map[..];
        if b.len() < HEADER_LEN {
            return Err(bad(format!(
                "truncated pack: {} bytes, shorter than the {HEADER_LEN}-byte header",
                b.len()
            )));
        }
        if &b[..8] != MAGIC {
            return Err(bad("not a pack (no M2TPACK magic)".into()));
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(bad(format!(
                "pack format version {version}; this trainer reads version {VERSION}"
            )));
        }
        if crc(&b[..60]) != u32_at(b, 60) {
            return Err(bad("corrupt pack: header checksum mismatch".into()));
        }
        let max_side = u32_at(b, 12);
        let count = u64_at(b, 16);
        let train_len = u64_at(b, 24);
        let (index_at, index_len) = (u64_at(b, 32), u64_at(b, 40));
        let file_len = b.len() as u64;
        if index_at.checked_add(index_len) != Some(file_len) || index_at < HEADER_LEN as u64 {
            return Err(bad(format!(
                "truncated or corrupt pack: {file_len} bytes, but the header puts the index at \
                 {index_at}..{}",
                index_at.saturating_add(index_len)
            )));
        }
        let index = &b[index_at as usize..];
        if crc(index) != u32_at(b, 48) {
            return Err(bad("corrupt pack: index checksum mismatch".into()));
        }
        if train_len > count || count > index_len / RECORD_LEN as u64 {
            return Err(bad(format!(
                "corrupt pack: {count} records ({train_len} training) do not fit a \
                 {index_len}-byte index"
            )));
        }
        let (records, classes) = parse_index(index, count as usize, index_at)
            .map_err(|e| bad(format!("corrupt pack: {e}")))?;
        Ok(Pack {
            path: path.to_path_buf(),
            map,
            records,
            train_len: train_len as usize,
            classes,
            max_side,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The encoded bytes of record `i`, checked against its checksum.
    pub fn bytes(&self, i: usize) -> Result<&[u8], String> {
        let r = &self.records[i];
        // Bounds were checked when the pack was opened.
        let bytes = &self.map[r.offset as usize..r.offset as usize + r.len as usize];
        if crc(bytes) != r.crc {
            return Err("checksum mismatch (corrupt pack)".into());
        }
        Ok(bytes)
    }

    /// How record `i` is named in messages: `pack.m2tpack: record 7 (cat/1.jpg)`.
    pub fn record_name(&self, i: usize) -> PathBuf {
        PathBuf::from(format!(
            "{}: record {i} ({})",
            self.path.display(),
            self.records[i].source
        ))
    }

    /// The records whose bytes fail their checksum, by index.
    pub fn corrupt_records(&self) -> Vec<usize> {
        (0..self.records.len())
            .filter(|&i| self.bytes(i).is_err())
            .collect()
    }
}

/// Class names and records of an index for `count` records whose bytes
/// must lie in `HEADER_LEN..data_end`.
fn parse_index(
    index: &[u8],
    count: usize,
    data_end: u64,
) -> Result<(Vec<Record>, Vec<String>), String> {
    let mut cur = Cursor {
        bytes: index,
        at: 0,
    };
    let class_count = cur.u32("the class count")? as usize;
    let classes = (0..class_count)
        .map(|c| cur.string(&format!("class name {c}")))
        .collect::<Result<Vec<_>, _>>()?;
    let table = cur.take(count * RECORD_LEN, "the record table")?;
    let mut records = Vec::with_capacity(count);
    for (i, r) in table.chunks_exact(RECORD_LEN).enumerate() {
        let record = Record {
            offset: u64_at(r, 0),
            len: u32_at(r, 8),
            crc: u32_at(r, 12),
            label: u32_at(r, 16),
            height: u32_at(r, 20),
            width: u32_at(r, 24),
            source: String::new(),
        };
        let end = record.offset.checked_add(u64::from(record.len));
        if record.offset < HEADER_LEN as u64 || end.is_none_or(|e| e > data_end) {
            return Err(format!(
                "record {i}: bytes {}..+{} outside the data region {HEADER_LEN}..{data_end}",
                record.offset, record.len
            ));
        }
        if record.label as usize >= class_count {
            return Err(format!(
                "record {i}: label {} but {class_count} classes",
                record.label
            ));
        }
        if record.height == 0 || record.width == 0 {
            return Err(format!("record {i}: empty image size"));
        }
        records.push(record);
    }
    for (i, record) in records.iter_mut().enumerate() {
        record.source = cur.string(&format!("record {i}'s name"))?;
    }
    if cur.at != index.len() {
        return Err(format!(
            "{} stray bytes after the index",
            index.len() - cur.at
        ));
    }
    Ok((records, classes))
}

/// Writes a pack: records in order, then [`Writer::finish`] writes the
/// index and the header.
pub struct Writer {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    at: u64,
    records: Vec<Record>,
}

impl Writer {
    /// Starts a pack at `path` (a placeholder header until `finish`).
    pub fn create(path: &Path) -> Result<Writer> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        file.write_all(&[0u8; HEADER_LEN])
            .map_err(|e| Error::io(path, e))?;
        Ok(Writer {
            file,
            path: path.to_path_buf(),
            at: HEADER_LEN as u64,
            records: Vec::new(),
        })
    }

    /// Appends one image's encoded `bytes`.
    pub fn push(
        &mut self,
        bytes: &[u8],
        label: u32,
        (height, width): (u32, u32),
        source: String,
    ) -> Result<()> {
        let len =
            u32::try_from(bytes.len()).map_err(|_| Error::data(&source, "image over 4 GiB"))?;
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.records.push(Record {
            offset: self.at,
            len,
            crc: crc(bytes),
            label,
            height,
            width,
            source,
        });
        self.at += u64::from(len);
        Ok(())
    }

    /// Records written so far.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record was written.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Writes the index (`classes`; the first `train_len` records are the
    /// training split) and the header; returns the file size.
    pub fn finish(mut self, classes: &[String], train_len: usize, max_side: u32) -> Result<u64> {
        let mut index = Vec::new();
        let put_str = |index: &mut Vec<u8>, s: &str| {
            index.extend_from_slice(&(s.len() as u32).to_le_bytes());
            index.extend_from_slice(s.as_bytes());
        };
        index.extend_from_slice(&(classes.len() as u32).to_le_bytes());
        for c in classes {
            put_str(&mut index, c);
        }
        for r in &self.records {
            index.extend_from_slice(&r.offset.to_le_bytes());
            for v in [r.len, r.crc, r.label, r.height, r.width] {
                index.extend_from_slice(&v.to_le_bytes());
            }
        }
        for r in &self.records {
            put_str(&mut index, &r.source);
        }
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&max_side.to_le_bytes());
        header[16..24].copy_from_slice(&(self.records.len() as u64).to_le_bytes());
        header[24..32].copy_from_slice(&(train_len as u64).to_le_bytes());
        header[32..40].copy_from_slice(&self.at.to_le_bytes());
        header[40..48].copy_from_slice(&(index.len() as u64).to_le_bytes());
        header[48..52].copy_from_slice(&crc(&index).to_le_bytes());
        let header_crc = crc(&header[..60]);
        header[60..64].copy_from_slice(&header_crc.to_le_bytes());
        let path = self.path.clone();
        let io = |e| Error::io(&path, e);
        self.file.write_all(&index).map_err(io)?;
        let mut file = self.file.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(self.at + index.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::TempDir;
    use super::*;

    fn write_pack(path: &Path) -> Vec<Vec<u8>> {
        let images: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
        let mut w = Writer::create(path).unwrap();
        for (i, img) in images.iter().enumerate() {
            w.push(img, i as u32 % 2, (3, 4), format!("c{}/{i}.jpg", i % 2))
                .unwrap();
        }
        w.finish(&["cat".into(), "dog".into()], 3, 256).unwrap();
        images
    }

    #[test]
    fn round_trip() {
        let dir = TempDir::new("pack-rt");
        let path = dir.path().join("p.m2tpack");
        let images = write_pack(&path);
        assert!(detect(&path));
        let pack = Pack::open(&path).unwrap();
        assert_eq!(
            (pack.records.len(), pack.train_len, pack.max_side),
            (5, 3, 256)
        );
        assert_eq!(pack.classes, ["cat", "dog"]);
        for (i, img) in images.iter().enumerate() {
            assert_eq!(pack.bytes(i).unwrap(), &img[..]);
            assert_eq!(pack.records[i].label, i as u32 % 2);
            assert_eq!(pack.records[i].source, format!("c{}/{i}.jpg", i % 2));
        }
        assert!(pack.corrupt_records().is_empty());
        let name = pack.record_name(4).display().to_string();
        assert!(name.ends_with("p.m2tpack: record 4 (c0/4.jpg)"), "{name}");
    }

    #[test]
    fn truncated_and_corrupt_packs_are_named_errors() {
        let dir = TempDir::new("pack-bad");
        let path = dir.path().join("p.m2tpack");
        write_pack(&path);
        let good = std::fs::read(&path).unwrap();
        let open_with = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            Pack::open(&path).map(|_| ()).unwrap_err().to_string()
        };
        // Cut anywhere: the header, the records or the index.
        for cut in [0, 10, 63, 64, 80, good.len() - 1] {
            let err = open_with(&good[..cut]);
            assert!(
                err.contains("truncated") || err.contains("magic"),
                "cut {cut}: {err}"
            );
        }
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        assert!(open_with(&flipped).contains("header checksum"));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open_with(&flipped).contains("index checksum"));
        let mut version = good.clone();
        version[8] = 9;
        assert!(open_with(&version).contains("version 9"));
        assert!(
            open_with(b"JFIF and more bytes than a header holds, certainly, yes, many more")
                .contains("magic")
        );

        // A flipped byte inside record 2: the pack opens, that record fails
        // its checksum when read, the others are fine.
        let mut record = good.clone();
        record[HEADER_LEN + 10 + 11 + 3] ^= 0xff;
        std::fs::write(&path, &record).unwrap();
        let pack = Pack::open(&path).unwrap();
        assert_eq!(pack.corrupt_records(), [2]);
        assert!(pack.bytes(2).unwrap_err().contains("checksum"));
        assert!(pack.bytes(1).is_ok() && pack.bytes(3).is_ok());
    }

    #[test]
    fn index_entries_out_of_bounds_are_refused() {
        // A record pointing past the data region, with valid checksums:
        // refused at open, not read out of bounds later.
        let mut index = Vec::new();
        index.extend_from_slice(&1u32.to_le_bytes());
        index.extend_from_slice(&1u32.to_le_bytes());
        index.push(b'a');
        index.extend_from_slice(&(HEADER_LEN as u64).to_le_bytes());
        for v in [1000u32, 0, 0, 1, 1] {
            index.extend_from_slice(&v.to_le_bytes());
        }
        index.extend_from_slice(&0u32.to_le_bytes());
        let err = parse_index(&index, 1, HEADER_LEN as u64 + 4).unwrap_err();
        assert!(err.contains("record 0") && err.contains("outside"), "{err}");
        let err = parse_index(&index[..10], 1, 1 << 20).unwrap_err();
        assert!(err.contains("index ends inside"), "{err}");
    }
}
