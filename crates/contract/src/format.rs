//! The checkpoint file format (docs/FILES.md "Checkpoints"): safetensors files holding the
//! model's [`VarMap`] under the reference state-dict keys, plus a `__metadata__` string map. A
//! group variable (aue-model's `state`: the stacked crop nets and fusion heads) is written and
//! read as its members, one reference key each, so files interchange with the reference's
//! `state_dict`. This is the one reader and writer of checkpoint files in the workspace.
//!
//! - [`save`]: atomic (temp file in the same folder, fsync, rename, fsync of the folder).
//! - [`read_metadata`]: the `__metadata__` map, reading only the header.
//! - [`load`]: strict: a missing key, an extra key, a wrong shape or dtype, or a NaN or infinite
//!   value is an error naming the key, and nothing is changed unless every check passes. Tensors are read one at a time, so
//!   loading needs little memory beyond the model itself.
//! - [`import_torchvision`]: a torchvision ResNet state dict (`.pth` pickle or `.safetensors`,
//!   keys with or without a `backbone.` prefix) into the backbone; `fc.*` is ignored.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use aue_model::state::{self, StateEntry, state_entries};

use crate::error::{ContractError, Result, io_err};

/// Metadata key holding the checkpoint format version written by [`save`].
pub const FORMAT_KEY: &str = "aue_format";
/// The current checkpoint format version.
pub const FORMAT_VERSION: &str = "1";

/// Largest safetensors header accepted (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone)]
struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range within the data section.
    begin: u64,
    end: u64,
}

/// A parsed safetensors header.
#[derive(Debug, Clone)]
struct Header {
    metadata: BTreeMap<String, String>,
    entries: BTreeMap<String, Entry>,
    /// File offset of the data section.
    data_start: u64,
}

fn dtype_from_str(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F64" => DType::F64,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

/// Read and check a safetensors header (and that every tensor lies inside the file).
fn read_header(path: &Path, file: &mut File) -> Result<Header> {
    let bad = |reason: String| {
        ContractError::bad_file(path, format!("not a valid safetensors file: {reason}"))
    };
    let io = |e| aue_core::io_err("cannot read", path)(e);
    let file_len = file.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| bad("shorter than 8 bytes".into()))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(bad(format!("header length {n} does not fit the file ({file_len} bytes)")));
    }
    let mut text = vec![0u8; n as usize];
    file.read_exact(&mut text).map_err(io)?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let obj = json.as_object().ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_start = 8 + n;
    let mut header = Header { metadata: BTreeMap::new(), entries: BTreeMap::new(), data_start };
    for (key, value) in obj {
        if key == "__metadata__" {
            let map =
                value.as_object().ok_or_else(|| bad("`__metadata__` is not an object".into()))?;
            for (k, v) in map {
                let v = v.as_str().ok_or_else(|| bad(format!("metadata `{k}` is not a string")))?;
                header.metadata.insert(k.clone(), v.to_string());
            }
            continue;
        }
        let field = |name: &str| {
            value.get(name).ok_or_else(|| bad(format!("tensor `{key}` has no `{name}`")))
        };
        let dtype_str = field("dtype")?.as_str().unwrap_or("?");
        let dtype = dtype_from_str(dtype_str)
            .ok_or_else(|| bad(format!("tensor `{key}` has unsupported dtype {dtype_str}")))?;
        let ints = |v: &serde_json::Value, what: &str| -> Result<Vec<u64>> {
            v.as_array()
                .and_then(|a| a.iter().map(|x| x.as_u64()).collect::<Option<Vec<_>>>())
                .ok_or_else(|| bad(format!("tensor `{key}`: `{what}` is not a list of integers")))
        };
        let shape: Vec<usize> =
            ints(field("shape")?, "shape")?.into_iter().map(|d| d as usize).collect();
        let offsets = ints(field("data_offsets")?, "data_offsets")?;
        let [begin, end] = offsets[..] else {
            return Err(bad(format!("tensor `{key}`: data_offsets must hold 2 numbers")));
        };
        let bytes =
            shape.iter().try_fold(dtype.size_in_bytes() as u64, |n, &d| n.checked_mul(d as u64));
        if end < begin
            || bytes != Some(end - begin)
            || data_start.checked_add(end).is_none_or(|e| e > file_len)
        {
            return Err(bad(format!(
                "tensor `{key}`: data_offsets [{begin}, {end}] do not fit {dtype_str} {shape:?}"
            )));
        }
        header.entries.insert(key.clone(), Entry { dtype, shape, begin, end });
    }
    Ok(header)
}

fn open(path: &Path) -> Result<File> {
    Ok(File::open(path).map_err(io_err("cannot open", path))?)
}

/// Read one tensor's bytes from the file, refusing NaN and infinite values.
fn read_entry(
    path: &Path,
    file: &mut File,
    header: &Header,
    key: &str,
    entry: &Entry,
    device: &Device,
) -> Result<Tensor> {
    let bytes = read_entry_bytes(path, file, header, key, entry)?;
    Ok(Tensor::from_raw_buffer(&bytes, entry.dtype, &entry.shape, device)?)
}

/// One tensor's bytes, checked to be finite when the dtype is a float.
fn read_entry_bytes(
    path: &Path,
    file: &mut File,
    header: &Header,
    key: &str,
    entry: &Entry,
) -> Result<Vec<u8>> {
    let io = |e| aue_core::io_err("cannot read", path)(e);
    file.seek(SeekFrom::Start(header.data_start + entry.begin)).map_err(io)?;
    let mut bytes = vec![0u8; (entry.end - entry.begin) as usize];
    file.read_exact(&mut bytes).map_err(io)?;
    check_finite(path, key, entry.dtype, &bytes)?;
    Ok(bytes)
}

/// Errors when a float tensor's little-endian `bytes` hold a NaN or an infinity.
fn check_finite(path: &Path, key: &str, dtype: DType, bytes: &[u8]) -> Result<()> {
    // First a scan of the exponent bits alone (all ones: NaN or infinity), branch-free so that it
    // vectorises: the per-value f64 conversion below took longer than reading the file for a
    // 1.5 GB checkpoint. Only a tensor it flags is walked again, for the count and the first value.
    let flagged = match dtype {
        DType::F32 => any_exponent_all_ones::<4>(bytes, 0x7f80_0000),
        DType::F64 => any_exponent_all_ones::<8>(bytes, 0x7ff0_0000_0000_0000),
        _ => true,
    };
    if !flagged {
        return Ok(());
    }
    let values: Box<dyn Iterator<Item = f64>> = match dtype {
        DType::F32 => Box::new(
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
        ),
        DType::F64 => Box::new(
            bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
        ),
        DType::F16 => {
            Box::new(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()))
        }
        DType::BF16 => Box::new(
            bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64()),
        ),
        _ => return Ok(()),
    };
    let mut count = 0;
    let mut first = 0.0;
    for v in values.filter(|v| !v.is_finite()) {
        if count == 0 {
            first = v;
        }
        count += 1;
    }
    if count > 0 {
        return Err(ContractError::NonFinite { path: path.into(), key: key.into(), count, first });
    }
    Ok(())
}

/// Whether a little-endian word of `N` bytes (4 or 8) in `bytes` has all the bits of
/// `exponent` set.
fn any_exponent_all_ones<const N: usize>(bytes: &[u8], exponent: u64) -> bool {
    bytes.chunks_exact(N).fold(false, |any, w| {
        let mut word = [0u8; 8];
        word[..N].copy_from_slice(w);
        any | (u64::from_le_bytes(word) & exponent == exponent)
    })
}

/// Errors when a float tensor holds a NaN or an infinity (tensors from other readers).
fn check_tensor_finite(path: &Path, key: &str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Ok(());
    }
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let bad: Vec<f64> = v.into_iter().filter(|x| !x.is_finite()).collect();
    match bad.first() {
        Some(&first) => Err(ContractError::NonFinite {
            path: path.into(),
            key: key.into(),
            count: bad.len(),
            first,
        }),
        None => Ok(()),
    }
}

/// The `__metadata__` map of a safetensors file, without reading its tensors.
pub fn read_metadata(path: impl AsRef<Path>) -> Result<BTreeMap<String, String>> {
    let path = path.as_ref();
    Ok(read_header(path, &mut open(path)?)?.metadata)
}

/// Every tensor of a safetensors file, with its metadata (for small files: inputs, fixtures).
pub fn read_safetensors(
    path: impl AsRef<Path>,
    device: &Device,
) -> Result<(BTreeMap<String, String>, BTreeMap<String, Tensor>)> {
    let path = path.as_ref();
    let mut file = open(path)?;
    let header = read_header(path, &mut file)?;
    let mut tensors = BTreeMap::new();
    for (key, entry) in &header.entries {
        tensors.insert(key.clone(), read_entry(path, &mut file, &header, key, entry, device)?);
    }
    Ok((header.metadata, tensors))
}

/// One tensor of a safetensors file by key (header and that tensor's bytes only).
pub fn read_tensor(path: impl AsRef<Path>, key: &str, device: &Device) -> Result<Tensor> {
    let path = path.as_ref();
    let mut file = open(path)?;
    let header = read_header(path, &mut file)?;
    let entry = header.entries.get(key).ok_or_else(|| ContractError::MissingKey {
        path: path.into(),
        key: key.into(),
        more: 0,
    })?;
    read_entry(path, &mut file, &header, key, entry, device)
}

/// A variable's tensor as the safetensors crate sees it; its bytes are produced while the file is
/// written, one tensor at a time (a device-to-host copy for GPU tensors).
struct View {
    tensor: Tensor,
    dtype: safetensors::Dtype,
    failure: Rc<RefCell<Option<String>>>,
}

impl View {
    fn bytes(&self) -> candle_core::Result<Vec<u8>> {
        let flat = self.tensor.flatten_all()?.to_device(&Device::Cpu)?;
        Ok(match self.tensor.dtype() {
            DType::I64 => flat.to_vec1::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F64 => flat.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => flat.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }
}

impl safetensors::View for View {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        self.tensor.dims()
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self.bytes() {
            Ok(bytes) => Cow::Owned(bytes),
            Err(e) => {
                // The trait cannot fail: remember the error; `save` reports it and drops the file.
                self.failure.borrow_mut().get_or_insert(e.to_string());
                Cow::Owned(Vec::new())
            }
        }
    }

    fn data_len(&self) -> usize {
        self.tensor.elem_count() * self.tensor.dtype().size_in_bytes()
    }
}

/// The model's reference state dict entries by key (group variables expanded, see `crate::state`).
fn entries_by_key(varmap: &VarMap) -> BTreeMap<String, StateEntry> {
    state_entries(varmap).into_iter().map(|e| (e.key.clone(), e)).collect()
}

/// Save every variable of `varmap` to `path` with `metadata` (plus [`FORMAT_KEY`]), atomically:
/// a temp file in the same folder is written, fsynced and renamed over `path`. Floats are written
/// as f32, the format's float type (an f64 model, a `--dtype f64` run, is narrowed).
pub fn save(
    varmap: &VarMap,
    path: impl AsRef<Path>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    save_as(varmap, path, metadata, DType::F32)
}

/// [`save`] with the float tensors written as `float` (F32 or F64: an f64 run's checkpoints kept
/// in full precision, `--checkpoint-dtype f64`).
pub fn save_as(
    varmap: &VarMap,
    path: impl AsRef<Path>,
    metadata: &BTreeMap<String, String>,
    float: DType,
) -> Result<()> {
    if !matches!(float, DType::F32 | DType::F64) {
        let reason = format!("cannot write floats as {float:?} (only F32 and F64)");
        return Err(ContractError::bad_file(path.as_ref(), reason));
    }
    // Under the reference keys: a group variable is written as its slices (views, no copy).
    let tensors: BTreeMap<String, Tensor> = state_entries(varmap)
        .into_iter()
        .map(|e| Ok((e.key.clone(), on_disk(e.tensor()?.detach(), float)?)))
        .collect::<Result<_>>()?;
    let mut metadata = metadata.clone();
    metadata.insert(FORMAT_KEY.to_string(), FORMAT_VERSION.to_string());
    write_safetensors(path, &tensors, &metadata)
}

/// `t` as it is written: a float tensor as `float`, anything else as it is.
fn on_disk(t: Tensor, float: DType) -> Result<Tensor> {
    let is_float = matches!(t.dtype(), DType::F32 | DType::F64);
    Ok(if is_float && t.dtype() != float { t.to_dtype(float)? } else { t })
}

/// Whether a file entry of `file` fills a variable of `var`: the same dtype, or one of f32 and
/// f64 into the other (an f64 run widens f32 checkpoints exactly; an f32 run rounds an f64 run's
/// `--checkpoint-dtype f64` files to nearest).
fn loads_into(file: DType, var: DType) -> bool {
    let float = |d| matches!(d, DType::F32 | DType::F64);
    file == var || (float(file) && float(var))
}

/// Write f32 / f64 / i64 tensors and a metadata map to a safetensors file, atomically (temp file in the
/// same folder, fsync, rename, fsync of the folder). Tensors may live on any device.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let failure = Rc::new(RefCell::new(None));
    let mut views = Vec::with_capacity(tensors.len());
    for (key, tensor) in tensors {
        let dtype = match tensor.dtype() {
            DType::F32 => safetensors::Dtype::F32,
            DType::F64 => safetensors::Dtype::F64,
            DType::I64 => safetensors::Dtype::I64,
            other => {
                let reason =
                    format!("cannot write `{key}`: dtype {other:?} (only F32, F64 and I64)");
                return Err(ContractError::bad_file(path, reason));
            }
        };
        views.push((key.clone(), View { tensor: tensor.clone(), dtype, failure: failure.clone() }));
    }
    let meta: HashMap<String, String> =
        metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    crate::fsio::write_atomic_with(path, |tmp| {
        safetensors::tensor::serialize_to_file(views, Some(meta), tmp)
            .map_err(|e| std::io::Error::other(format!("writing safetensors: {e}")))?;
        match failure.borrow_mut().take() {
            Some(e) => Err(std::io::Error::other(format!("reading a tensor to save: {e}"))),
            None => Ok(()),
        }
    })
}

/// The dtype and shape of every tensor of a safetensors file, reading only its header.
pub fn tensor_infos(path: impl AsRef<Path>) -> Result<BTreeMap<String, (DType, Vec<usize>)>> {
    let path = path.as_ref();
    let header = read_header(path, &mut open(path)?)?;
    Ok(header.entries.into_iter().map(|(k, e)| (k, (e.dtype, e.shape))).collect())
}

/// The first key of a sorted set, and how many more there are.
fn first_and_more(keys: &BTreeSet<&String>) -> Option<(String, usize)> {
    keys.iter().next().map(|k| ((*k).clone(), keys.len() - 1))
}

/// Check that `entry` can fill the state entry `var` (shape and dtype).
fn check_entry(path: &Path, key: &str, entry: &Entry, var: &StateEntry) -> Result<()> {
    // A float file loads into a variable of another float precision (an f64 run reads f32
    // checkpoints); any other difference of dtype is a mismatch.
    let dtype = if loads_into(entry.dtype, var.dtype()) { var.dtype() } else { entry.dtype };
    let found = (entry.shape.as_slice(), dtype);
    Ok(aue_model::TensorMismatch::check(path, key, found, (var.dims(), var.dtype()))?)
}

/// Load a checkpoint strictly into `varmap` and return its metadata. The file must hold exactly
/// the variables of `varmap` with their shapes and dtypes; otherwise nothing is changed and the
/// error names the first offending key.
pub fn load(varmap: &VarMap, path: impl AsRef<Path>) -> Result<BTreeMap<String, String>> {
    let path = path.as_ref();
    let mut file = open(path)?;
    let header = read_header(path, &mut file)?;
    let vars = entries_by_key(varmap);
    check_key_sets(path, &vars, &header)?;
    for (key, entry) in &header.entries {
        let var = &vars[key];
        let t = read_entry(path, &mut file, &header, key, entry, var.var.device())?;
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    tracing::debug!(path = %path.display(), tensors = header.entries.len(), "checkpoint loaded");
    Ok(header.metadata)
}

/// One tensor's bytes (from [`read_entry_bytes`]) straight into a new variable (one copy from the
/// file, none through zeros).
fn var_from_bytes(bytes: &[u8], entry: &Entry, device: &Device) -> Result<Var> {
    let shape = entry.shape.as_slice();
    Ok(match entry.dtype {
        DType::F32 => Var::from_vec(
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            shape,
            device,
        )?,
        DType::I64 => {
            let v: Vec<i64> = bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .collect();
            Var::from_vec(v, shape, device)?
        }
        _ => Var::from_tensor(&Tensor::from_raw_buffer(bytes, entry.dtype, shape, device)?)?,
    })
}

/// Build the model of `config` from a checkpoint, strictly (as [`load`]), and return it with the
/// checkpoint's metadata. Each variable is created from the file's data directly, so this needs
/// about one copy of the weights in memory (use it for large models; [`load`] writes into an
/// existing model).
pub fn load_model(
    path: impl AsRef<Path>,
    config: &aue_model::ModelConfig,
    device: &Device,
) -> Result<(aue_model::AueModel, BTreeMap<String, String>)> {
    let path = path.as_ref();
    let mut file = open(path)?;
    let header = read_header(path, &mut file)?;
    // The expected state, from a model whose (zero) variables are never touched, so never paged in.
    let probe = aue_model::AueModel::new(config, device)?;
    let vars = entries_by_key(probe.varmap());
    check_key_sets(path, &vars, &header)?;
    // The variables to create: (variable key, shape, dtype), group variables once each.
    let layout: BTreeMap<String, (Vec<usize>, DType)> = {
        let data = probe.varmap().data().lock().unwrap_or_else(|e| e.into_inner());
        data.iter().map(|(k, v)| (k.clone(), (v.dims().to_vec(), v.dtype()))).collect()
    };
    drop(vars);
    drop(probe);
    let loaded = VarMap::new();
    for (key, (shape, dtype)) in &layout {
        let var = match state::split_group_key(key) {
            // A group: a zero variable whose slices are then read one by one into place.
            Some(_) => {
                let var = Var::zeros(shape.as_slice(), *dtype, device)?;
                for i in 0..shape[0] {
                    let member = state::member_key(key, i);
                    // (check_key_sets has seen every member; an error rather than a panic all
                    // the same.)
                    let entry =
                        header.entries.get(&member).ok_or_else(|| ContractError::MissingKey {
                            path: path.into(),
                            key: member.clone(),
                            more: 0,
                        })?;
                    let slice = read_entry(path, &mut file, &header, &member, entry, device)?
                        .to_dtype(*dtype)?;
                    var.as_tensor().slice_set(&slice.unsqueeze(0)?, 0, i)?;
                }
                var
            }
            None => {
                let entry = header.entries.get(key).ok_or_else(|| ContractError::MissingKey {
                    path: path.into(),
                    key: key.clone(),
                    more: 0,
                })?;
                let bytes = read_entry_bytes(path, &mut file, &header, key, entry)?;
                let var = var_from_bytes(&bytes, entry, device)?;
                drop(bytes);
                if var.dtype() == *dtype {
                    var
                } else {
                    // An f64 file (`--checkpoint-dtype f64`) into this f32 model, or back.
                    Var::from_tensor(&var.as_tensor().to_dtype(*dtype)?)?
                }
            }
        };
        loaded.data().lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), var);
    }
    let model = aue_model::AueModel::with_varmap(&loaded, config, device)?;
    tracing::debug!(path = %path.display(), tensors = header.entries.len(), "model loaded");
    Ok((model, header.metadata))
}

/// The strict checks of [`load`]: same keys, and every shape and dtype equal.
fn check_key_sets(path: &Path, vars: &BTreeMap<String, StateEntry>, header: &Header) -> Result<()> {
    let missing: BTreeSet<&String> =
        vars.keys().filter(|k| !header.entries.contains_key(*k)).collect();
    if let Some((key, more)) = first_and_more(&missing) {
        return Err(ContractError::MissingKey { path: path.into(), key, more });
    }
    let extra: BTreeSet<&String> =
        header.entries.keys().filter(|k| !vars.contains_key(*k)).collect();
    if let Some((key, more)) = first_and_more(&extra) {
        return Err(ContractError::ExtraKey { path: path.into(), key, more });
    }
    for (key, entry) in &header.entries {
        check_entry(path, key, entry, &vars[key])?;
    }
    Ok(())
}

/// What [`import_torchvision`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// Backbone variables set from the file.
    pub loaded: usize,
    /// `fc.*` entries ignored.
    pub ignored_fc: usize,
    /// `num_batches_tracked` buffers absent from the file (older torchvision weights), set to 0.
    pub zeroed_batch_counters: usize,
}

/// Import torchvision ResNet weights (ImageNet initialisation) into the `backbone.*` variables.
///
/// `path` is a PyTorch `state_dict` saved by `torch.save` (`.pth`, `.pt`, ...) or a
/// `.safetensors` file. Keys may carry a `backbone.` prefix. `fc.*` is ignored (the reference
/// replaces the classifier). Otherwise strict: every other backbone variable must be present with
/// its shape and dtype, and no other key may appear, except that a missing `num_batches_tracked`
/// (torchvision's published weights predate it) is set to 0, as PyTorch does.
pub fn import_torchvision(varmap: &VarMap, path: impl AsRef<Path>) -> Result<ImportSummary> {
    let path = path.as_ref();
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let raw: Vec<(String, Tensor)> = if is_safetensors {
        read_safetensors(path, &Device::Cpu)?.1.into_iter().collect()
    } else {
        candle_core::pickle::read_all(path).map_err(|e| {
            ContractError::bad_file(path, format!("not a readable PyTorch state dict: {e}"))
        })?
    };
    if raw.is_empty() {
        return Err(ContractError::bad_file(
            path,
            "holds no tensors: expected a ResNet state dict (tensor names to tensors), as \
             torchvision's resnet*.pth or `torch.save(model.state_dict(), ...)` writes",
        ));
    }
    let vars: BTreeMap<String, StateEntry> = entries_by_key(varmap)
        .into_iter()
        .filter(|(k, _)| k.starts_with("backbone.") && !k.starts_with("backbone.fc."))
        .collect();
    let mut found: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut ignored_fc = 0;
    for (name, tensor) in raw {
        let bare = name.strip_prefix("backbone.").unwrap_or(&name);
        if bare.starts_with("fc.") {
            ignored_fc += 1;
            continue;
        }
        let key = format!("backbone.{bare}");
        if !vars.contains_key(&key) {
            return Err(ContractError::ExtraKey { path: path.into(), key: name, more: 0 });
        }
        found.insert(key, tensor);
    }
    let missing: BTreeSet<&String> = vars
        .keys()
        .filter(|k| !found.contains_key(*k) && !k.ends_with(".num_batches_tracked"))
        .collect();
    if let Some((key, more)) = first_and_more(&missing) {
        let bare = key.trim_start_matches("backbone.").to_string();
        return Err(ContractError::MissingKey { path: path.into(), key: bare, more });
    }
    for (key, t) in &found {
        let entry = Entry { dtype: t.dtype(), shape: t.dims().to_vec(), begin: 0, end: 0 };
        check_entry(path, key, &entry, &vars[key])?;
        check_tensor_finite(path, key, t)?;
    }
    let mut zeroed = 0;
    for (key, var) in &vars {
        match found.get(key) {
            Some(t) => var.set(t)?,
            None => {
                var.set(&Tensor::zeros((), DType::I64, var.var.device())?)?;
                zeroed += 1;
            }
        }
    }
    tracing::info!(path = %path.display(), loaded = found.len(), ignored_fc, zeroed, "torchvision weights imported");
    Ok(ImportSummary { loaded: found.len(), ignored_fc, zeroed_batch_counters: zeroed })
}

impl From<candle_core::Error> for ContractError {
    fn from(source: candle_core::Error) -> Self {
        aue_core::Context::new("tensor operation", source).into()
    }
}

impl From<aue_model::ModelError> for ContractError {
    fn from(source: aue_model::ModelError) -> Self {
        aue_core::Context::new("model", source).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn f64_bytes(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// (count, first) of the error, or None when the check passes.
    fn bad(dtype: DType, bytes: &[u8]) -> Option<(usize, f64)> {
        match check_finite(Path::new("m.safetensors"), "w", dtype, bytes) {
            Ok(()) => None,
            Err(ContractError::NonFinite { count, first, key, .. }) => {
                assert_eq!(key, "w");
                Some((count, first))
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    /// Extreme finite values pass (largest, smallest subnormal, -0); each kind of non-finite
    /// value is found wherever it sits, counted, and the first one reported.
    #[test]
    fn non_finite_values_are_found_and_counted() {
        let fine32 = [f32::MAX, f32::MIN, f32::from_bits(1), -0.0, 1.5, f32::MIN_POSITIVE];
        let fine64 = [f64::MAX, f64::MIN, f64::from_bits(1), -0.0, 1.5, f64::MIN_POSITIVE];
        assert_eq!(bad(DType::F32, &f32_bytes(&fine32)), None);
        assert_eq!(bad(DType::F64, &f64_bytes(&fine64)), None);
        assert_eq!(bad(DType::F32, &[]), None);
        for (i, x) in
            [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN].into_iter().enumerate()
        {
            for at in [0, 3, 5] {
                let mut v = fine32.to_vec();
                v[at] = x;
                v.push(f32::INFINITY);
                let (count, first) = bad(DType::F32, &f32_bytes(&v)).expect("flagged");
                assert_eq!(count, 2, "value {i} at {at}");
                assert!(first.is_nan() == x.is_nan() && (x.is_nan() || first == x as f64));
                let mut w: Vec<f64> = fine64.to_vec();
                w[at] = x as f64;
                let (count, first) = bad(DType::F64, &f64_bytes(&w)).expect("flagged");
                assert_eq!(count, 1, "f64 value {i} at {at}");
                assert!(first.is_nan() == x.is_nan() && (x.is_nan() || first == x as f64));
            }
        }
    }
}
