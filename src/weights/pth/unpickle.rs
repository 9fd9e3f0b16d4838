//! A small, safe evaluator for the pickles that `torch.save` writes (`data.pkl`).
//!
//! It never imports or runs anything: GLOBALs become names, and only the handful of callables a
//! state dict needs are evaluated (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `_rebuild_parameter`, `_rebuild_from_type_v2`, ...). Any other call becomes an opaque
//! [`Node::Object`] that remembers its class, so the caller can recognise a pickled model object.
//!
//! Values live in an arena and refer to each other by index, so memo references never copy data,
//! mutation through the memo behaves as in Python, cycles are harmless and dropping is not
//! recursive. Every read is bounds-checked against the pickle bytes, so no allocation exceeds the
//! input size, and no input makes it panic.

use super::PthDtype;
use std::collections::HashMap;

pub(crate) type Id = usize;

/// What the `storage_type` of a persistent storage record says about its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StorageKind {
    /// A typed storage (`torch.FloatStorage`, ...).
    Typed(PthDtype),
    /// `torch.UntypedStorage`: bytes; the tensor must carry its own dtype.
    Untyped,
    /// A storage class this reader does not support (complex, quantized, ...).
    Unsupported(String),
}

/// A `('storage', storage_type, key, location, numel)` persistent record.
#[derive(Debug, Clone)]
pub(crate) struct StorageRef {
    pub key: String,
    pub kind: StorageKind,
    /// Elements (typed storage) or bytes (untyped storage), as recorded; informational.
    pub numel: Option<u64>,
}

/// A tensor view rebuilt by `_rebuild_tensor_v2` (or v3).
#[derive(Debug, Clone)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub dtype: PthDtype,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// Some payloads (floats, bytes, call arguments) are only kept for `Debug` output.
#[allow(dead_code)]
#[derive(Debug)]
pub(crate) enum Node {
    None,
    Bool(bool),
    Int(i64),
    /// An integer outside the i64 range (value not kept).
    BigInt,
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global {
        module: String,
        name: String,
    },
    Storage(StorageRef),
    Tensor(TensorRef),
    /// The result of calling or instantiating something this reader does not evaluate.
    Object {
        class: Id,
        args: Id,
        state: Option<Id>,
    },
}

/// An evaluated pickle: the arena and the id of the unpickled object.
#[derive(Debug)]
pub(crate) struct Pickle {
    pub nodes: Vec<Node>,
    pub root: Id,
}

impl Pickle {
    pub fn node(&self, id: Id) -> &Node {
        &self.nodes[id]
    }

    pub fn as_str(&self, id: Id) -> Option<&str> {
        match &self.nodes[id] {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// `module.name` of an object's class, when it is a plain GLOBAL.
    pub fn object_class(&self, id: Id) -> Option<(&str, &str)> {
        match &self.nodes[id] {
            Node::Object { class, .. } => match &self.nodes[*class] {
                Node::Global { module, name } => Some((module, name)),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Evaluate `data` as a pickle. Errors are plain descriptions that name the offending byte offset.
pub(crate) fn load(data: &[u8]) -> Result<Pickle, String> {
    let mut m = Machine {
        data,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        copy_budget: data.len().saturating_mul(8).saturating_add(4096),
    };
    match m.run() {
        Ok(root) => Ok(Pickle { nodes: m.nodes, root }),
        Err(e) => Err(format!("{e} (at byte {} of {})", m.pos, data.len())),
    }
}

/// Calls nested through `_rebuild_from_type_v2` deeper than this are rejected.
const MAX_CALL_DEPTH: u32 = 16;
/// Longest text line (GLOBAL names, text opcodes) accepted.
const MAX_LINE: usize = 1 << 16;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    /// Elements / bytes that evaluation may still copy out of existing values. Memo references
    /// let a small pickle use one large value many times; copying it each time would need memory
    /// quadratic in the input, so copies are charged here (torch pickles use a small fraction).
    copy_budget: usize,
}

impl<'a> Machine<'a> {
    // ---- input -------------------------------------------------------------------------------

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let remaining = self.data.len() - self.pos;
        if n > remaining as u64 {
            return Err(format!("pickle is cut short: needs {n} more bytes, {remaining} left"));
        }
        let n = n as usize;
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.arr()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr()?))
    }

    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let limit = rest.len().min(MAX_LINE);
        let nl = rest[..limit].iter().position(|&b| b == b'\n').ok_or("text argument without end of line")?;
        let raw = &rest[..nl];
        self.pos += nl + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        std::str::from_utf8(raw).map_err(|_| "text argument is not UTF-8".to_string())
    }

    // ---- stack -------------------------------------------------------------------------------

    fn add(&mut self, n: Node) -> Id {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn push_new(&mut self, n: Node) {
        let id = self.add(n);
        self.stack.push(id);
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Id, String> {
        if self.stack.len() <= self.floor() {
            return Err("stack underflow".into());
        }
        Ok(self.stack.pop().expect("checked non-empty"))
    }

    fn top(&self) -> Result<Id, String> {
        if self.stack.len() <= self.floor() {
            return Err("stack underflow".into());
        }
        Ok(*self.stack.last().expect("checked non-empty"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, String> {
        let m = self.marks.pop().ok_or("MARK expected but not found")?;
        Ok(self.stack.split_off(m))
    }

    fn memo_get(&self, idx: u64) -> Result<Id, String> {
        self.memo.get(&idx).copied().ok_or_else(|| format!("memo entry {idx} is missing"))
    }

    fn memo_put(&mut self, idx: u64) -> Result<(), String> {
        let top = self.top()?;
        self.memo.insert(idx, top);
        Ok(())
    }

    fn charge(&mut self, n: usize) -> Result<(), String> {
        self.copy_budget = self
            .copy_budget
            .checked_sub(n)
            .ok_or("data.pkl expands to far more data than it holds (corrupt or hostile pickle)")?;
        Ok(())
    }

    /// The elements of a tuple or list (copied, and charged).
    fn items(&mut self, id: Id) -> Result<Option<Vec<Id>>, String> {
        let n = match &self.nodes[id] {
            Node::Tuple(v) | Node::List(v) => v.len(),
            _ => return Ok(None),
        };
        self.charge(n)?;
        match &self.nodes[id] {
            Node::Tuple(v) | Node::List(v) => Ok(Some(v.clone())),
            _ => Ok(None),
        }
    }

    fn int(&self, id: Id) -> Option<i64> {
        match &self.nodes[id] {
            Node::Int(v) => Some(*v),
            Node::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// A copy of a string value (charged).
    fn string(&mut self, id: Id) -> Result<Option<String>, String> {
        let n = match &self.nodes[id] {
            Node::Str(s) => s.len(),
            _ => return Ok(None),
        };
        self.charge(n)?;
        Ok(self.as_str(id).map(str::to_string))
    }

    fn as_str(&self, id: Id) -> Option<&str> {
        match &self.nodes[id] {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    // ---- evaluation --------------------------------------------------------------------------

    fn run(&mut self) -> Result<Id, String> {
        loop {
            if self.pos >= self.data.len() {
                return Err("pickle ends without a STOP opcode (truncated data.pkl?)".into());
            }
            let op = self.u8()?;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(format!("unsupported pickle protocol {v}"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.stack.len() > self.floor() {
                        self.stack.pop();
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'N' => self.push_new(Node::None),
                0x88 => self.push_new(Node::Bool(true)),
                0x89 => self.push_new(Node::Bool(false)),
                b'I' => {
                    let l = self.line()?;
                    let n = match l {
                        "00" => Node::Bool(false),
                        "01" => Node::Bool(true),
                        _ => parse_int_text(l)?,
                    };
                    self.push_new(n);
                }
                b'L' => {
                    let l = self.line()?;
                    let n = parse_int_text(l.strip_suffix('L').unwrap_or(l))?;
                    self.push_new(n);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.arr()?);
                    self.push_new(Node::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push_new(Node::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push_new(Node::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()?;
                    let b = self.take(n as u64)?;
                    self.push_new(decode_long(b));
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.arr()?);
                    if n < 0 {
                        return Err("LONG4 with a negative length".into());
                    }
                    let b = self.take(n as u64)?;
                    self.push_new(decode_long(b));
                }
                b'F' => {
                    let l = self.line()?;
                    let v: f64 = l.trim().parse().map_err(|_| format!("bad FLOAT text {l:?}"))?;
                    self.push_new(Node::Float(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.arr()?);
                    self.push_new(Node::Float(v));
                }
                b'S' => {
                    let l = self.line()?;
                    let s = l.trim();
                    let s = s
                        .strip_prefix('\'')
                        .and_then(|s| s.strip_suffix('\''))
                        .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                        .ok_or("STRING argument is not quoted")?;
                    self.push_new(Node::Str(s.to_string()));
                }
                b'V' => {
                    let l = self.line()?;
                    self.push_new(Node::Str(l.to_string()));
                }
                b'T' | b'X' => {
                    let n = self.u32()?;
                    if op == b'T' && n > i32::MAX as u32 {
                        return Err("BINSTRING with a negative length".into());
                    }
                    let b = self.take(n as u64)?;
                    self.push_new(Node::Str(String::from_utf8_lossy(b).into_owned()));
                }
                b'U' | 0x8c => {
                    let n = self.u8()?;
                    let b = self.take(n as u64)?;
                    self.push_new(Node::Str(String::from_utf8_lossy(b).into_owned()));
                }
                0x8d => {
                    let n = self.u64()?;
                    let b = self.take(n)?;
                    self.push_new(Node::Str(String::from_utf8_lossy(b).into_owned()));
                }
                b'B' => {
                    let n = self.u32()?;
                    let b = self.take(n as u64)?;
                    self.push_new(Node::Bytes(b.to_vec()));
                }
                b'C' => {
                    let n = self.u8()?;
                    let b = self.take(n as u64)?;
                    self.push_new(Node::Bytes(b.to_vec()));
                }
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    let b = self.take(n)?;
                    self.push_new(Node::Bytes(b.to_vec()));
                }
                b')' => self.push_new(Node::Tuple(Vec::new())),
                b't' => {
                    let v = self.pop_mark()?;
                    self.push_new(Node::Tuple(v));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < self.floor() + n {
                        return Err("stack underflow".into());
                    }
                    let v = self.stack.split_off(self.stack.len() - n);
                    self.push_new(Node::Tuple(v));
                }
                b']' | 0x8f => self.push_new(Node::List(Vec::new())),
                b'l' | 0x91 => {
                    let v = self.pop_mark()?;
                    self.push_new(Node::List(v));
                }
                b'}' => self.push_new(Node::Dict(Vec::new())),
                b'd' => {
                    let v = self.pop_mark()?;
                    let pairs = pairs(v)?;
                    self.push_new(Node::Dict(pairs));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' | 0x90 => {
                    let v = self.pop_mark()?;
                    self.append(v)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![(k, v)])?;
                }
                b'u' => {
                    let v = self.pop_mark()?;
                    let p = pairs(v)?;
                    self.set_items(p)?;
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.push_new(Node::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (self.string(module)?, self.string(name)?) {
                        (Some(module), Some(name)) => self.push_new(Node::Global { module, name }),
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'i' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    let args = self.pop_mark()?;
                    let class = self.add(Node::Global { module, name });
                    let args = self.add(Node::Tuple(args));
                    let r = self.call(class, args, 0)?;
                    self.stack.push(r);
                }
                b'o' => {
                    let mut v = self.pop_mark()?;
                    if v.is_empty() {
                        return Err("OBJ without a class".into());
                    }
                    let class = v.remove(0);
                    let args = self.add(Node::Tuple(v));
                    let r = self.call(class, args, 0)?;
                    self.stack.push(r);
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let r = self.call(f, args, 0)?;
                    self.stack.push(r);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let r = self.call(f, args, 0)?;
                    self.stack.push(r);
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?;
                    // Only opaque objects keep their state. An OrderedDict's state is its instance
                    // dict (e.g. the `_metadata` of a state dict), which is not an item of the dict.
                    if let Node::Object { state: s, .. } = &mut self.nodes[obj] {
                        *s = Some(state);
                    }
                }
                b'p' => {
                    let l = self.line()?;
                    let idx = l.trim().parse().map_err(|_| format!("bad PUT index {l:?}"))?;
                    self.memo_put(idx)?;
                }
                b'q' => {
                    let idx = self.u8()?;
                    self.memo_put(idx as u64)?;
                }
                b'r' => {
                    let idx = self.u32()?;
                    self.memo_put(idx as u64)?;
                }
                0x94 => {
                    let idx = self.memo.len() as u64;
                    self.memo_put(idx)?;
                }
                b'g' => {
                    let l = self.line()?;
                    let idx = l.trim().parse().map_err(|_| format!("bad GET index {l:?}"))?;
                    let id = self.memo_get(idx)?;
                    self.stack.push(id);
                }
                b'h' => {
                    let idx = self.u8()?;
                    let id = self.memo_get(idx as u64)?;
                    self.stack.push(id);
                }
                b'j' => {
                    let idx = self.u32()?;
                    let id = self.memo_get(idx as u64)?;
                    self.stack.push(id);
                }
                b'P' => {
                    let l = self.line()?.to_string();
                    let pid = self.add(Node::Str(l));
                    let r = self.persistent_load(pid)?;
                    self.stack.push(r);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let r = self.persistent_load(pid)?;
                    self.stack.push(r);
                }
                0x82..=0x84 => return Err("pickle extension registry opcodes (EXT1/2/4) are not supported".into()),
                0x97 | 0x98 => return Err("out-of-band pickle buffers are not supported".into()),
                other => return Err(format!("unknown pickle opcode 0x{other:02x}")),
            }
        }
    }

    fn append(&mut self, values: Vec<Id>) -> Result<(), String> {
        let target = self.top()?;
        match &mut self.nodes[target] {
            Node::List(v) => {
                v.extend(values);
                Ok(())
            }
            Node::Object { .. } => Ok(()),
            _ => Err("APPEND to something that is not a list".into()),
        }
    }

    fn set_items(&mut self, items: Vec<(Id, Id)>) -> Result<(), String> {
        let target = self.top()?;
        match &mut self.nodes[target] {
            Node::Dict(d) => {
                d.extend(items);
                Ok(())
            }
            Node::Object { .. } => Ok(()),
            _ => Err("SETITEM on something that is not a dict".into()),
        }
    }

    /// Resolve a persistent id: torch writes `('storage', storage_type, key, location, numel)`.
    fn persistent_load(&mut self, pid: Id) -> Result<Id, String> {
        const WHAT: &str =
            "unsupported persistent id in data.pkl (expected a torch ('storage', type, key, location, numel) record)";
        if !matches!(&self.nodes[pid], Node::Tuple(_)) {
            return Err(WHAT.into());
        }
        let items = self.items(pid)?.unwrap_or_default();
        if items.len() < 4 || self.as_str(items[0]) != Some("storage") {
            return Err(WHAT.into());
        }
        let kind = match &self.nodes[items[1]] {
            Node::Global { module, name } if module == "torch" || module.starts_with("torch.") => storage_kind(name),
            Node::Global { module, name } => StorageKind::Unsupported(format!("{module}.{name}")),
            _ => return Err(WHAT.into()),
        };
        let key = match &self.nodes[items[2]] {
            Node::Str(_) => self.string(items[2])?.unwrap_or_default(),
            Node::Int(i) => i.to_string(),
            _ => return Err(WHAT.into()),
        };
        let numel = items.get(4).and_then(|&i| self.int(i)).and_then(|v| u64::try_from(v).ok());
        Ok(self.add(Node::Storage(StorageRef { key, kind, numel })))
    }

    fn call(&mut self, f: Id, args: Id, depth: u32) -> Result<Id, String> {
        if depth > MAX_CALL_DEPTH {
            return Err("tensor rebuild calls nested too deeply".into());
        }
        let (module, name) = match &self.nodes[f] {
            Node::Global { module, name } => (module.clone(), name.clone()),
            _ => return Ok(self.add(Node::Object { class: f, args, state: None })),
        };
        self.charge(module.len() + name.len())?;
        let arg_items = self.items(args)?.unwrap_or_default();
        let id = match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
                let mut d = Vec::new();
                if let Some(&first) = arg_items.first() {
                    let n = match &self.nodes[first] {
                        Node::Dict(p) => p.len(),
                        Node::List(v) | Node::Tuple(v) => v.len(),
                        _ => 0,
                    };
                    self.charge(n)?;
                    match &self.nodes[first] {
                        Node::Dict(p) => d = p.clone(),
                        Node::List(v) | Node::Tuple(v) => {
                            for &pair in v {
                                match &self.nodes[pair] {
                                    Node::Tuple(kv) | Node::List(kv) if kv.len() == 2 => d.push((kv[0], kv[1])),
                                    _ => {
                                        return Err(
                                            "OrderedDict built from something that is not (key, value) pairs".into()
                                        )
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
                self.add(Node::Dict(d))
            }
            ("collections", "defaultdict") => self.add(Node::Dict(Vec::new())),
            ("builtins" | "__builtin__", "set" | "frozenset" | "list") => {
                let v = match arg_items.first() {
                    Some(&i) => self.items(i)?.unwrap_or_default(),
                    None => Vec::new(),
                };
                self.add(Node::List(v))
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => self.rebuild_tensor(&arg_items, None)?,
            ("torch._utils", "_rebuild_tensor_v3") => self.rebuild_tensor(&arg_items, Some(6))?,
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                *arg_items.first().ok_or("_rebuild_parameter without arguments")?
            }
            ("torch._tensor" | "torch.tensor", "_rebuild_from_type_v2" | "_rebuild_from_type") => {
                if arg_items.len() < 3 {
                    return Err(format!("{module}.{name} with too few arguments"));
                }
                self.call(arg_items[0], arg_items[2], depth + 1)?
            }
            ("copy_reg" | "copyreg", "_reconstructor" | "__newobj__" | "__newobj_ex__") if !arg_items.is_empty() => {
                self.add(Node::Object { class: arg_items[0], args, state: None })
            }
            _ => self.add(Node::Object { class: f, args, state: None }),
        };
        Ok(id)
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`;
    /// v3 adds the dtype as 7th argument (`dtype_arg`).
    fn rebuild_tensor(&mut self, a: &[Id], dtype_arg: Option<usize>) -> Result<Id, String> {
        if a.len() < 4 {
            return Err("tensor rebuild with fewer than 4 arguments".into());
        }
        let storage = match &self.nodes[a[0]] {
            Node::Storage(s) => s.clone(),
            _ => return Err("tensor rebuild whose first argument is not a storage record".into()),
        };
        self.charge(storage.key.len())?;
        let offset = self.uint(a[1], "storage offset")?;
        let shape = self.uint_tuple(a[2], "size")?;
        let stride = self.uint_tuple(a[3], "stride")?;
        if shape.len() != stride.len() {
            return Err(format!("tensor size {shape:?} and stride {stride:?} have different ranks"));
        }
        let explicit = match dtype_arg {
            Some(i) => {
                let id = *a.get(i).ok_or("_rebuild_tensor_v3 without a dtype argument")?;
                Some(match &self.nodes[id] {
                    Node::Global { module, name } if module == "torch" => {
                        torch_dtype(name).ok_or_else(|| format!("unsupported tensor dtype torch.{name}"))?
                    }
                    _ => return Err("_rebuild_tensor_v3 dtype argument is not a torch dtype".into()),
                })
            }
            None => None,
        };
        let dtype = match (&storage.kind, explicit) {
            (_, Some(d)) => d,
            (StorageKind::Typed(d), None) => *d,
            (StorageKind::Untyped, None) => {
                return Err("tensor stored in an untyped storage without a dtype".into());
            }
            (StorageKind::Unsupported(t), None) => return Err(format!("unsupported storage type {t}")),
        };
        Ok(self.add(Node::Tensor(TensorRef { storage, dtype, offset, shape, stride })))
    }

    fn uint(&self, id: Id, what: &str) -> Result<u64, String> {
        match self.int(id) {
            Some(v) if v >= 0 => Ok(v as u64),
            Some(v) => Err(format!("negative tensor {what} {v}")),
            None => Err(format!("tensor {what} is not an integer")),
        }
    }

    fn uint_tuple(&mut self, id: Id, what: &str) -> Result<Vec<u64>, String> {
        let items = self.items(id)?.ok_or_else(|| format!("tensor {what} is not a tuple"))?;
        items.into_iter().map(|i| self.uint(i, what)).collect()
    }
}

fn pairs(mut v: Vec<Id>) -> Result<Vec<(Id, Id)>, String> {
    if v.len() % 2 != 0 {
        return Err("odd number of items for a dict".into());
    }
    let mut out = Vec::with_capacity(v.len() / 2);
    let mut it = v.drain(..);
    while let (Some(k), Some(val)) = (it.next(), it.next()) {
        out.push((k, val));
    }
    Ok(out)
}

fn parse_int_text(s: &str) -> Result<Node, String> {
    let t = s.trim();
    if t.is_empty() || !t.trim_start_matches(['-', '+']).bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad integer text {s:?}"));
    }
    Ok(t.parse::<i64>().map(Node::Int).unwrap_or(Node::BigInt))
}

/// Little-endian two's-complement integer of any length (LONG1 / LONG4).
fn decode_long(b: &[u8]) -> Node {
    if b.is_empty() {
        return Node::Int(0);
    }
    let negative = b[b.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0x00 };
    if b.len() > 8 && b[8..].iter().any(|&x| x != fill) {
        return Node::BigInt;
    }
    let mut buf = [fill; 8];
    let n = b.len().min(8);
    buf[..n].copy_from_slice(&b[..n]);
    let v = i64::from_le_bytes(buf);
    // A value that only fits after dropping sign-extension bytes must keep its sign.
    if b.len() > 8 && ((v < 0) != negative) {
        return Node::BigInt;
    }
    Node::Int(v)
}

fn storage_kind(name: &str) -> StorageKind {
    let d = match name {
        "FloatStorage" => PthDtype::F32,
        "DoubleStorage" => PthDtype::F64,
        "HalfStorage" => PthDtype::F16,
        "BFloat16Storage" => PthDtype::BF16,
        "LongStorage" => PthDtype::I64,
        "IntStorage" => PthDtype::I32,
        "ShortStorage" => PthDtype::I16,
        "CharStorage" => PthDtype::I8,
        "ByteStorage" => PthDtype::U8,
        "BoolStorage" => PthDtype::Bool,
        "UntypedStorage" | "_UntypedStorage" => return StorageKind::Untyped,
        other => return StorageKind::Unsupported(format!("torch.{other}")),
    };
    StorageKind::Typed(d)
}

fn torch_dtype(name: &str) -> Option<PthDtype> {
    Some(match name {
        "float32" | "float" => PthDtype::F32,
        "float64" | "double" => PthDtype::F64,
        "float16" | "half" => PthDtype::F16,
        "bfloat16" => PthDtype::BF16,
        "int64" | "long" => PthDtype::I64,
        "int32" | "int" => PthDtype::I32,
        "int16" | "short" => PthDtype::I16,
        "int8" => PthDtype::I8,
        "uint8" => PthDtype::U8,
        "bool" => PthDtype::Bool,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs() {
        assert!(matches!(decode_long(&[]), Node::Int(0)));
        assert!(matches!(decode_long(&[0xff]), Node::Int(-1)));
        assert!(matches!(decode_long(&[0x00, 0x01]), Node::Int(256)));
        assert!(matches!(decode_long(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]), Node::BigInt));
        assert!(matches!(decode_long(&[0xff; 12]), Node::Int(-1)));
        assert!(matches!(decode_long(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0]), Node::BigInt));
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        let seeds: &[&[u8]] = &[
            b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01u.",
            b"(((((ttttt.",
            b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff.",
            b"h\x05.",
            b"0000.",
            b"]a.",
            b"\x93.",
            b"cfoo\nbar\n)R}b.",
            b"\x85.",
        ];
        for s in seeds {
            let _ = load(s);
            for cut in 0..s.len() {
                let _ = load(&s[..cut]);
            }
        }
        // Every 2-byte prefix followed by a STOP.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let _ = load(&[a, b, b'.']);
            }
        }
    }

    #[test]
    fn memo_amplification_is_capped() {
        // L = [('k', 1)] * 2000 (memo references), then OrderedDict(L) 100000 times: copying L
        // each time would need ~3 GB from a 700 kB pickle.
        let mut p = vec![0x80, 2];
        p.extend_from_slice(b"X\x01\x00\x00\x00kK\x01\x86q\x00](");
        for _ in 0..2000 {
            p.extend_from_slice(b"h\x00");
        }
        p.extend_from_slice(b"eq\x01ccollections\nOrderedDict\nq\x02");
        for _ in 0..100_000 {
            p.extend_from_slice(b"h\x02h\x01\x85R0");
        }
        p.push(b'.');
        let e = load(&p).unwrap_err();
        assert!(e.contains("expands"), "{e}");
        // The same with 10 calls is fine.
        let cut = p.len() - 1 - (100_000 - 10) * 7;
        let mut q = p[..cut].to_vec();
        q.push(b'.');
        load(&q).unwrap();
    }

    #[test]
    fn ordered_dict_with_metadata() {
        // OrderedDict(); d['a'] = 1; d._metadata = {'x': 2} (BUILD)
        let p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00aK\x01s}X\x01\x00\x00\x00xK\x02sb.";
        let pk = load(p).unwrap();
        match pk.node(pk.root) {
            Node::Dict(d) => {
                assert_eq!(d.len(), 1);
                assert_eq!(pk.as_str(d[0].0), Some("a"));
            }
            other => panic!("{other:?}"),
        }
    }
}
