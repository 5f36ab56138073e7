//! GGUF reader (versions 2 and 3): metadata, tensor infos, and tensor bytes.
//!
//! Every length read from the file is checked against the bytes that remain
//! before anything is allocated, so a corrupt or hostile header is an error
//! naming the problem, never a multi-gigabyte allocation or a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// The ggml tensor types phi-web reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
}

impl GgmlType {
    const SUPPORTED: &'static str = "F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K";

    fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    fn id_name(id: u32) -> &'static str {
        match id {
            6 => "Q5_0",
            7 => "Q5_1",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            13 => "Q5_K",
            15 => "Q8_K",
            16..=23 => "an IQ type",
            _ => "an unknown type",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// (elements, bytes) of one block.
    pub fn block(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q6K => (256, 210),
        }
    }
}

/// One tensor's header. `dims` are in ggml order: `dims[0]` is the
/// contiguous (column) dimension, so a matrix [rows, cols] has dims [cols, rows].
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: u64,
    pub size: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// [rows, cols] in PyTorch order (a vector is [n]).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file: header in memory, tensor data read on demand.
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

/// A byte reader that knows how much of the file remains. It may hold only
/// the first `available` bytes (a range request's prefix): running past them
/// sets `short` — more bytes are needed, the file is not wrong.
struct Cursor<R> {
    inner: R,
    pos: u64,
    len: u64,
    available: u64,
    short: bool,
    file: String,
}

impl<R: Read> Cursor<R> {
    fn fail(&self, message: impl Into<String>) -> Error {
        Error::format(&self.file, format!("{} (at byte {})", message.into(), self.pos))
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        if self.len - self.pos < N as u64 {
            return Err(self.fail(format!("truncated while reading {what}")));
        }
        self.ensure_available(N as u64, what)?;
        self.inner.read_exact(&mut buf).map_err(|e| self.fail(format!("reading {what}: {e}")))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// Fails unless `count` items of at least `min_size` bytes fit in the rest of the file.
    fn ensure_fits(&self, count: u64, min_size: u64, what: &str) -> Result<()> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.len - self.pos => Ok(()),
            _ => Err(self.fail(format!("{what}: {count} items cannot fit in the {} bytes left", self.len - self.pos))),
        }
    }

    fn ensure_available(&mut self, n: u64, what: &str) -> Result<()> {
        if self.available - self.pos < n {
            self.short = true;
            return Err(self.fail(format!("the header continues past the {} bytes read, in {what}", self.available)));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        self.ensure_fits(len, 1, what)?;
        self.ensure_available(len, what)?;
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf).map_err(|e| self.fail(format!("reading {what}: {e}")))?;
        self.pos += len;
        String::from_utf8(buf).map_err(|_| self.fail(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, type_id: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match type_id {
            0 => Value::U8(self.bytes::<1>(key)?[0]),
            1 => Value::I8(self.bytes::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.bytes(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.bytes(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes(key)?)),
            7 => Value::Bool(self.bytes::<1>(key)?[0] != 0),
            8 => Value::Str(self.string(key)?),
            9 if depth == 0 => {
                let item_type = self.u32(key)?;
                let count = self.u64(key)?;
                self.ensure_fits(count, 1, key)?;
                let mut items = Vec::with_capacity(count.min(1 << 20) as usize);
                for _ in 0..count {
                    items.push(self.value(item_type, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.bytes(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes(key)?)),
            other => return Err(self.fail(format!("metadata {key}: unknown value type {other}"))),
        })
    }
}

impl Gguf {
    /// Reads the header of the GGUF file at `path`.
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let name = path.display().to_string();
        let mut c = Cursor { inner: BufReader::new(file), pos: 0, len, available: len, short: false, file: name };
        Gguf::parse(&mut c, path)
    }

    /// The header from the first bytes of a GGUF of `file_len` bytes (a
    /// range request's answer; `name` is its URL): None when the header runs
    /// past `prefix`, so the caller reads more and tries again.
    pub fn from_prefix(prefix: &[u8], file_len: u64, name: &str) -> Result<Option<Gguf>> {
        let available = (prefix.len() as u64).min(file_len);
        let mut c = Cursor { inner: prefix, pos: 0, len: file_len, available, short: false, file: name.to_string() };
        match Gguf::parse(&mut c, Path::new(name)) {
            Err(_) if c.short => Ok(None),
            other => other.map(Some),
        }
    }

    fn parse<R: Read>(c: &mut Cursor<R>, path: &Path) -> Result<Gguf> {
        let len = c.len;
        let magic: [u8; 4] = c.bytes("the magic")?;
        if &magic != MAGIC {
            let hint = if magic.starts_with(b"<") { " (this looks like HTML, not a model file)" } else { "" };
            return Err(c.fail(format!(
                "not a GGUF file: magic {magic:?}{hint}; check that the path or URL names a .gguf file"
            )));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(c.fail(format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        let tensor_count = c.u64("the tensor count")?;
        let kv_count = c.u64("the metadata count")?;
        // A metadata entry is at least 8 + 4 + 1 bytes, a tensor info 8 + 4 + 8 + 4 + 8.
        c.ensure_fits(kv_count, 13, "metadata entries")?;
        c.ensure_fits(tensor_count, 32, "tensor infos")?;

        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = c.string("a metadata key")?;
            let type_id = c.u32(&key)?;
            let value = c.value(type_id, &key, 0)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(c.fail(format!("general.alignment {v:?} is not a power of two"))),
            },
        };

        let mut infos = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = c.string("a tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.fail(format!("tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let type_id = c.u32(&name)?;
            let offset = c.u64(&name)?;
            infos.push((name, dims, type_id, offset));
        }
        let data_start = c.pos.next_multiple_of(alignment);

        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, type_id, offset) in infos {
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| Error::Unsupported {
                what: format!(
                    "tensor type {} ({type_id}) of tensor {name} in {}",
                    GgmlType::id_name(type_id),
                    path.display()
                ),
                supported: format!(
                    "{} (pick a file of the model in one of these, or requantize it with llama.cpp's llama-quantize)",
                    GgmlType::SUPPORTED
                ),
            })?;
            let elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let (block_elems, block_bytes) = ggml_type.block();
            let size = match elements {
                Some(n) if n > 0 && dims[0] % block_elems == 0 => (n / block_elems).checked_mul(block_bytes),
                _ => None,
            }
            .ok_or_else(|| c.fail(format!("tensor {name}: impossible shape {dims:?} for {}", ggml_type.name())))?;
            if offset % alignment != 0 {
                return Err(c.fail(format!("tensor {name}: offset {offset} is not aligned to {alignment}")));
            }
            let start = data_start.checked_add(offset);
            match start.and_then(|s| s.checked_add(size)) {
                Some(end) if end <= len => {}
                _ => {
                    return Err(Error::format(
                        path.display(),
                        format!(
                            "truncated: tensor {name} needs bytes {}..{} but the file has {len}; \
                             download it again",
                            data_start + offset,
                            (data_start + offset).saturating_add(size)
                        ),
                    ))
                }
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset: data_start + offset, size });
        }
        Ok(Gguf { path: path.to_path_buf(), version, metadata, tensors })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of one tensor.
    pub fn read(&self, file: &mut File, info: &TensorInfo) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; info.size as usize];
        file.seek(SeekFrom::Start(info.offset)).map_err(|e| Error::io(&self.path, e))?;
        file.read_exact(&mut bytes)
            .map_err(|e| Error::format(self.path.display(), format!("reading tensor {}: {e}", info.name)))?;
        Ok(bytes)
    }
}
