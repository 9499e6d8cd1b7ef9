//! A small ONNX graph builder: values are names, every helper appends standard-domain nodes and
//! returns its output's name. Weights go in as f32 [`Array`]s and are stored in the graph's
//! weight dtype; graph inputs and outputs stay f32 whatever that dtype is, so a consumer's code
//! does not change between an f32 and an f16 bake.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, NodeProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::Array;

/// The precision weights are stored and computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats; normalizations and softmax still run in f32 (see [`Graph::group_norm`]).
    F16,
}

impl WeightType {
    /// The ONNX element type.
    pub fn data_type(self) -> DataType {
        match self {
            WeightType::F32 => DataType::FLOAT,
            WeightType::F16 => DataType::FLOAT16,
        }
    }

    /// The name used on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "f32",
            WeightType::F16 => "f16",
        }
    }
}

/// A dimension of a graph input or output: fixed or named (dynamic).
#[derive(Debug, Clone)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic size such as `batch`.
    Named(&'static str),
}

/// One initializer: its bytes already in the stored element type.
#[derive(Debug, Clone)]
pub struct Initializer {
    /// Name in the graph.
    pub name: String,
    /// Dimensions.
    pub dims: Vec<i64>,
    /// ONNX element type.
    pub data_type: DataType,
    /// Raw little-endian bytes.
    pub bytes: Vec<u8>,
}

/// A graph under construction.
#[derive(Debug)]
pub struct Graph {
    /// Graph name.
    pub name: String,
    /// Weight and compute precision.
    pub weight_type: WeightType,
    /// Nodes in topological order.
    pub nodes: Vec<NodeProto>,
    /// Weights and constants.
    pub initializers: Vec<Initializer>,
    /// Graph inputs.
    pub inputs: Vec<ValueInfoProto>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfoProto>,
    counter: usize,
    constants: HashMap<(String, Vec<u8>), String>,
    scope: Vec<String>,
}

fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INTS.into(),
        ints: values.to_vec(),
        ..Default::default()
    }
}

/// An integer attribute.
pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INT.into(),
        i: value,
        ..Default::default()
    }
}

fn attr_float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::FLOAT.into(),
        f: value,
        ..Default::default()
    }
}

fn attr_string(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::STRING.into(),
        s: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A graph attribute (the branches of `If`).
pub fn attr_graph(name: &str, graph: GraphProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::GRAPH.into(),
        g: Some(graph).into(),
        ..Default::default()
    }
}

/// A tensor-typed value description.
pub fn value_info(name: &str, data_type: DataType, dims: &[Dim]) -> ValueInfoProto {
    let shape = TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| {
                let mut dim = tensor_shape_proto::Dimension::new();
                match d {
                    Dim::Fixed(v) => dim.set_dim_value(*v),
                    Dim::Named(n) => dim.set_dim_param(n.to_string()),
                }
                dim
            })
            .collect(),
        ..Default::default()
    };
    let tensor = type_proto::Tensor {
        elem_type: data_type as i32,
        shape: Some(shape).into(),
        ..Default::default()
    };
    let mut ty = TypeProto::new();
    ty.set_tensor_type(tensor);
    ValueInfoProto {
        name: name.into(),
        type_: Some(ty).into(),
        ..Default::default()
    }
}

/// Converts f32 values to the stored bytes of `data_type`.
fn to_bytes(data: &[f32], data_type: DataType) -> Vec<u8> {
    match data_type {
        DataType::FLOAT16 => data
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

impl Graph {
    /// An empty graph.
    pub fn new(name: &str, weight_type: WeightType) -> Self {
        Self {
            name: name.into(),
            weight_type,
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            counter: 0,
            constants: HashMap::new(),
            scope: Vec::new(),
        }
    }

    /// Copies the nodes of `sub` (a whole network built on its own) into this graph, feeding
    /// its inputs from `inputs` (in order), and returns the names its outputs have here.
    /// Values are renamed under `scope/`, so one network can be inlined several times (a UNet
    /// per denoising step); its initializers are referred to as `weight_prefix` + their name and
    /// must be moved in once with [`Graph::adopt_weights`].
    pub fn inline(
        &mut self,
        sub: &Graph,
        scope: &str,
        weight_prefix: &str,
        inputs: &[&str],
    ) -> Vec<String> {
        assert_eq!(
            sub.inputs.len(),
            inputs.len(),
            "{} takes {} inputs",
            sub.name,
            sub.inputs.len()
        );
        let fed: HashMap<&str, &str> = sub
            .inputs
            .iter()
            .map(|v| v.name.as_str())
            .zip(inputs.iter().copied())
            .collect();
        let weights: HashSet<&str> = sub.initializers.iter().map(|i| i.name.as_str()).collect();
        let rename = |v: &str| -> String {
            if v.is_empty() {
                String::new()
            } else if let Some(outer) = fed.get(v) {
                outer.to_string()
            } else if weights.contains(v) {
                format!("{weight_prefix}{v}")
            } else {
                format!("{scope}/{v}")
            }
        };
        for node in &sub.nodes {
            let mut node = node.clone();
            node.name = format!("{scope}/{}", node.name);
            node.input = node.input.iter().map(|v| rename(v)).collect();
            node.output = node.output.iter().map(|v| rename(v)).collect();
            self.nodes.push(node);
        }
        sub.outputs.iter().map(|v| rename(&v.name)).collect()
    }

    /// Moves the initializers of `sub` into this graph under `weight_prefix` (see
    /// [`Graph::inline`]).
    pub fn adopt_weights(&mut self, sub: Graph, weight_prefix: &str) {
        self.initializers
            .extend(sub.initializers.into_iter().map(|mut init| {
                init.name = format!("{weight_prefix}{}", init.name);
                init
            }));
    }

    /// An empty graph for a control-flow branch of this one. Its values are numbered after
    /// this graph's, so names stay unique across the model; close it with
    /// [`Graph::close_branch`] before building the next.
    pub fn branch(&self, name: &str) -> Graph {
        let mut b = Graph::new(name, self.weight_type);
        b.counter = self.counter;
        b
    }

    /// Ends a branch: its constants move to this graph (the outer scope, which the branch may
    /// read), and its nodes and outputs become the body of an `If` attribute.
    pub fn close_branch(&mut self, branch: Graph) -> GraphProto {
        self.counter = branch.counter;
        self.initializers.extend(branch.initializers);
        GraphProto {
            name: branch.name,
            node: branch.nodes,
            output: branch.outputs,
            ..Default::default()
        }
    }

    /// Names the nodes added until the matching [`Graph::pop`] after a module path
    /// (`down_blocks.0.resnets.1`), so a graph viewer shows the diffusers structure.
    pub fn push(&mut self, scope: impl Into<String>) {
        self.scope.push(scope.into());
    }

    /// Ends the innermost [`Graph::push`].
    pub fn pop(&mut self) {
        self.scope.pop();
    }

    fn fresh(&mut self, op: &str) -> String {
        self.counter += 1;
        let scope = self.scope.join(".");
        if scope.is_empty() {
            format!("{op}_{}", self.counter)
        } else {
            format!("{scope}/{op}_{}", self.counter)
        }
    }

    /// Appends a node with one output and returns the output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        let name = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.clone()],
            name: name.clone(),
            op_type: op.into(),
            attribute: attributes,
            ..Default::default()
        });
        name
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, data_type: DataType, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, data_type, dims));
        name.into()
    }

    /// Declares `value` as the graph output `name` (an Identity names it).
    pub fn output(&mut self, value: &str, name: &str, data_type: DataType, dims: &[Dim]) {
        self.nodes.push(NodeProto {
            input: vec![value.into()],
            output: vec![name.into()],
            name: format!("{name}/Identity"),
            op_type: "Identity".into(),
            ..Default::default()
        });
        self.outputs.push(value_info(name, data_type, dims));
    }

    /// Declares a compute-type value as the f32 graph output `name`: the networks' outputs are
    /// f32 whatever their weight type.
    pub fn output_f32(&mut self, value: &str, name: &str, dims: &[Dim]) {
        let value = self.cast_f32(value);
        self.output(&value, name, DataType::FLOAT, dims);
    }

    /// Adds a weight under its checkpoint name, stored in the graph's weight type.
    pub fn weight(&mut self, name: &str, array: &Array) -> String {
        let data_type = self.weight_type.data_type();
        self.initializer(name, array, data_type)
    }

    /// Adds a weight kept in f32 (normalization parameters, which run in f32).
    pub fn weight_f32(&mut self, name: &str, array: &Array) -> String {
        self.initializer(name, array, DataType::FLOAT)
    }

    fn initializer(&mut self, name: &str, array: &Array, data_type: DataType) -> String {
        self.initializers.push(Initializer {
            name: name.into(),
            dims: array.shape.iter().map(|&d| d as i64).collect(),
            data_type,
            bytes: to_bytes(&array.data, data_type),
        });
        name.into()
    }

    /// A constant, shared between uses of the same value.
    fn constant(&mut self, dims: &[i64], data_type: DataType, bytes: Vec<u8>) -> String {
        let key = (format!("{dims:?}{}", data_type as i32), bytes);
        if let Some(name) = self.constants.get(&key) {
            return name.clone();
        }
        self.counter += 1;
        let name = format!("const_{}", self.counter);
        self.initializers.push(Initializer {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type,
            bytes: key.1.clone(),
        });
        self.constants.insert(key, name.clone());
        name
    }

    /// An int64 vector constant (shapes, axes).
    pub fn ints(&mut self, values: &[i64]) -> String {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(&[values.len() as i64], DataType::INT64, bytes)
    }

    /// An int64 scalar constant.
    pub fn int_scalar(&mut self, value: i64) -> String {
        self.constant(&[], DataType::INT64, value.to_le_bytes().to_vec())
    }

    /// Number of weight values (elements of every initializer).
    pub fn parameters(&self) -> u64 {
        self.initializers
            .iter()
            .map(|i| i.dims.iter().product::<i64>().max(1) as u64)
            .sum()
    }

    /// A scalar in the compute type.
    pub fn scalar(&mut self, value: f32) -> String {
        let data_type = self.weight_type.data_type();
        self.constant(&[], data_type, to_bytes(&[value], data_type))
    }

    /// An f32 scalar constant (for math kept in f32 whatever the weight type).
    pub fn scalar_f32(&mut self, value: f32) -> String {
        self.constant_f32(&Array::new(vec![], vec![value]))
    }

    /// An f32 constant of any shape.
    pub fn constant_f32(&mut self, array: &Array) -> String {
        self.constant(
            &array.shape.iter().map(|&d| d as i64).collect::<Vec<_>>(),
            DataType::FLOAT,
            to_bytes(&array.data, DataType::FLOAT),
        )
    }

    /// A constant in the compute type.
    pub fn constant_compute(&mut self, array: &Array) -> String {
        let data_type = self.weight_type.data_type();
        self.constant(
            &array.shape.iter().map(|&d| d as i64).collect::<Vec<_>>(),
            data_type,
            to_bytes(&array.data, data_type),
        )
    }

    /// Casts to `data_type`.
    pub fn cast(&mut self, x: &str, data_type: DataType) -> String {
        self.op("Cast", &[x], vec![attr_int("to", data_type as i64)])
    }

    /// Casts a graph input (f32) to the compute type; a no-op for f32 graphs.
    pub fn cast_compute(&mut self, x: &str) -> String {
        match self.weight_type {
            WeightType::F32 => x.into(),
            WeightType::F16 => self.cast(x, DataType::FLOAT16),
        }
    }

    /// Casts a compute-type value to f32 (graph outputs, normalizations).
    pub fn cast_f32(&mut self, x: &str) -> String {
        match self.weight_type {
            WeightType::F32 => x.into(),
            WeightType::F16 => self.cast(x, DataType::FLOAT),
        }
    }

    /// Elementwise a + b (broadcasting).
    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b], vec![])
    }

    /// Elementwise a − b.
    pub fn sub(&mut self, a: &str, b: &str) -> String {
        self.op("Sub", &[a, b], vec![])
    }

    /// Elementwise a · b.
    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], vec![])
    }

    /// Matrix product.
    pub fn matmul(&mut self, a: &str, b: &str) -> String {
        self.op("MatMul", &[a, b], vec![])
    }

    /// Reshape to a constant shape (0 copies the input's dimension, −1 is inferred).
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let shape = self.ints(shape);
        self.op("Reshape", &[x, &shape], vec![])
    }

    /// Reshape to the shape held by the value `shape`.
    pub fn reshape_like(&mut self, x: &str, shape: &str) -> String {
        self.op("Reshape", &[x, shape], vec![])
    }

    /// The shape of `x`, as an int64 vector value.
    pub fn shape(&mut self, x: &str) -> String {
        self.op("Shape", &[x], vec![])
    }

    /// Axis permutation.
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], vec![attr_ints("perm", perm)])
    }

    /// Concatenation along `axis`.
    pub fn concat(&mut self, values: &[&str], axis: i64) -> String {
        self.op("Concat", values, vec![attr_int("axis", axis)])
    }

    /// `x[starts:ends]` along `axes`.
    pub fn slice(&mut self, x: &str, starts: &str, ends: &str, axes: &[i64]) -> String {
        let axes = self.ints(axes);
        self.op("Slice", &[x, starts, ends, &axes], vec![])
    }

    /// Inserts size-1 axes.
    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        let axes = self.ints(axes);
        self.op("Unsqueeze", &[x, &axes], vec![])
    }

    /// Splits the last axis into two equal halves.
    pub fn split_half(&mut self, x: &str) -> (String, String) {
        let a = self.fresh("Split");
        let (first, second) = (format!("{a}:0"), format!("{a}:1"));
        self.nodes.push(NodeProto {
            input: vec![x.into()],
            output: vec![first.clone(), second.clone()],
            name: a,
            op_type: "Split".into(),
            // Opset 17: with no `split` input the outputs are equal parts.
            attribute: vec![attr_int("axis", -1)],
            ..Default::default()
        });
        (first, second)
    }

    /// SiLU: x · σ(x).
    pub fn silu(&mut self, x: &str) -> String {
        let s = self.op("Sigmoid", &[x], vec![]);
        self.mul(x, &s)
    }

    /// Exact GELU: x · ½(1 + erf(x/√2)).
    pub fn gelu(&mut self, x: &str) -> String {
        let r = self.scalar(std::f32::consts::FRAC_1_SQRT_2);
        let half = self.scalar(0.5);
        let one = self.scalar(1.0);
        let scaled = self.mul(x, &r);
        let e = self.op("Erf", &[&scaled], vec![]);
        let e1 = self.add(&e, &one);
        let h = self.mul(x, &half);
        self.mul(&h, &e1)
    }

    /// OpenAI CLIP's quick GELU: x · σ(1.702x).
    pub fn quick_gelu(&mut self, x: &str) -> String {
        let k = self.scalar(1.702);
        let scaled = self.mul(x, &k);
        let s = self.op("Sigmoid", &[&scaled], vec![]);
        self.mul(x, &s)
    }

    /// A linear layer: `x · wᵀ + b` with the checkpoint's `weight` (out, in), stored transposed
    /// (in, out) under `{name}.weight` so MatMul takes it as is.
    pub fn linear(&mut self, x: &str, name: &str, weight: &Array, bias: Option<&Array>) -> String {
        let w = self.weight(&format!("{name}.weight"), &weight.transposed());
        let y = self.matmul(x, &w);
        match bias {
            Some(b) => {
                let b = self.weight(&format!("{name}.bias"), b);
                self.add(&y, &b)
            }
            None => y,
        }
    }

    /// A 2-D convolution; `pads` is ONNX's [top, left, bottom, right].
    pub fn conv(
        &mut self,
        x: &str,
        name: &str,
        weight: &Array,
        bias: &Array,
        stride: i64,
        pads: [i64; 4],
    ) -> String {
        let w = self.weight(&format!("{name}.weight"), weight);
        let b = self.weight(&format!("{name}.bias"), bias);
        let k = weight.shape[2] as i64;
        self.op(
            "Conv",
            &[x, &w, &b],
            vec![
                attr_ints("kernel_shape", &[k, k]),
                attr_ints("strides", &[stride, stride]),
                attr_ints("pads", &pads),
                attr_ints("dilations", &[1, 1]),
                attr_int("group", 1),
            ],
        )
    }

    /// Group normalization over (batch, channels, …): InstanceNormalization on the channels
    /// grouped into `groups` rows, then the per-channel affine. It runs in f32 in an f16 graph
    /// (half-precision variance over thousands of pixels loses too much).
    pub fn group_norm(
        &mut self,
        x: &str,
        name: &str,
        groups: usize,
        gamma: &Array,
        beta: &Array,
        eps: f64,
    ) -> String {
        let channels = gamma.data.len();
        let xf = self.cast_f32(x);
        let shape = self.shape(&xf);
        let grouped = self.reshape(&xf, &[0, groups as i64, -1]);
        let ones = self.constant_f32(&Array::filled(vec![groups], 1.0));
        let zeros = self.constant_f32(&Array::filled(vec![groups], 0.0));
        let normed = self.op(
            "InstanceNormalization",
            &[&grouped, &ones, &zeros],
            vec![attr_float("epsilon", eps as f32)],
        );
        let back = self.reshape_like(&normed, &shape);
        let g = self.weight_f32(
            &format!("{name}.weight"),
            &gamma.reshaped(vec![channels, 1, 1]),
        );
        let b = self.weight_f32(
            &format!("{name}.bias"),
            &beta.reshaped(vec![channels, 1, 1]),
        );
        let scaled = self.mul(&back, &g);
        let y = self.add(&scaled, &b);
        self.cast_compute(&y)
    }

    /// Layer normalization over the last axis (in f32 in an f16 graph).
    pub fn layer_norm(
        &mut self,
        x: &str,
        name: &str,
        gamma: &Array,
        beta: &Array,
        eps: f64,
    ) -> String {
        let xf = self.cast_f32(x);
        let g = self.weight_f32(&format!("{name}.weight"), gamma);
        let b = self.weight_f32(&format!("{name}.bias"), beta);
        let y = self.op(
            "LayerNormalization",
            &[&xf, &g, &b],
            vec![attr_int("axis", -1), attr_float("epsilon", eps as f32)],
        );
        self.cast_compute(&y)
    }

    /// Softmax over the last axis, in f32 in an f16 graph.
    pub fn softmax(&mut self, x: &str) -> String {
        let xf = self.cast_f32(x);
        let y = self.op("Softmax", &[&xf], vec![attr_int("axis", -1)]);
        self.cast_compute(&y)
    }

    /// Nearest-neighbour resize of (batch, channels, h, w) to the spatial size of `like`
    /// (PyTorch's `nearest`: asymmetric coordinates, floor).
    pub fn upsample_nearest_like(&mut self, x: &str, like: &str) -> String {
        let x_shape = self.shape(x);
        let like_shape = self.shape(like);
        let zero = self.ints(&[0]);
        let two = self.ints(&[2]);
        let four = self.ints(&[4]);
        let head = self.slice(&x_shape, &zero, &two, &[0]);
        let tail = self.slice(&like_shape, &two, &four, &[0]);
        let sizes = self.concat(&[&head, &tail], 0);
        self.op(
            "Resize",
            &[x, "", "", &sizes],
            vec![
                attr_string("mode", "nearest"),
                attr_string("coordinate_transformation_mode", "asymmetric"),
                attr_string("nearest_mode", "floor"),
            ],
        )
    }

    /// Nearest-neighbour ×2 of (batch, channels, h, w).
    pub fn upsample_nearest_2x(&mut self, x: &str) -> String {
        let scales = self.constant_f32(&Array::new(vec![4], vec![1.0, 1.0, 2.0, 2.0]));
        self.op(
            "Resize",
            &[x, "", &scales],
            vec![
                attr_string("mode", "nearest"),
                attr_string("coordinate_transformation_mode", "asymmetric"),
                attr_string("nearest_mode", "floor"),
            ],
        )
    }

    /// Scaled dot-product attention of (batch, tokens, heads·d) queries over keys and values,
    /// with an optional additive `mask` broadcast onto the (batch, heads, tokens, tokens')
    /// scores. `upcast` computes the scores in f32 (SD 2.1's `upcast_attention`).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        q: &str,
        k: &str,
        v: &str,
        heads: usize,
        head_dim: usize,
        mask: Option<&str>,
        upcast: bool,
    ) -> String {
        let (h, d) = (heads as i64, head_dim as i64);
        let qh = self.reshape(q, &[0, -1, h, d]);
        let qh = self.transpose(&qh, &[0, 2, 1, 3]);
        let kh = self.reshape(k, &[0, -1, h, d]);
        let kt = self.transpose(&kh, &[0, 2, 3, 1]);
        let vh = self.reshape(v, &[0, -1, h, d]);
        let vh = self.transpose(&vh, &[0, 2, 1, 3]);
        let upcast = upcast && self.weight_type == WeightType::F16;
        let (qh, kt) = if upcast {
            (self.cast_f32(&qh), self.cast_f32(&kt))
        } else {
            (qh, kt)
        };
        let scores = self.matmul(&qh, &kt);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let scale = if upcast {
            self.scalar_f32(scale)
        } else {
            self.scalar(scale)
        };
        let scores = self.mul(&scores, &scale);
        let scores = match mask {
            Some(m) => self.add(&scores, m),
            None => scores,
        };
        let probs = if upcast {
            let p = self.op("Softmax", &[&scores], vec![attr_int("axis", -1)]);
            self.cast_compute(&p)
        } else {
            self.softmax(&scores)
        };
        let out = self.matmul(&probs, &vh);
        let out = self.transpose(&out, &[0, 2, 1, 3]);
        self.reshape(&out, &[0, -1, h * d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// y = x·w + 1 as its own graph.
    fn affine() -> Graph {
        let mut g = Graph::new("affine", WeightType::F32);
        let x = g.input("x", DataType::FLOAT, &[Dim::Fixed(2)]);
        let w = g.weight("w", &Array::new(vec![2], vec![2.0, 3.0]));
        let one = g.scalar(1.0);
        let y = g.mul(&x, &w);
        let y = g.add(&y, &one);
        g.output(&y, "y", DataType::FLOAT, &[Dim::Fixed(2)]);
        g
    }

    #[test]
    fn a_network_inlined_twice_shares_its_weights_and_keeps_values_apart() {
        let sub = affine();
        let mut g = Graph::new("outer", WeightType::F32);
        let x = g.input("x", DataType::FLOAT, &[Dim::Fixed(2)]);
        let first = g.inline(&sub, "a", "net.", &[&x]);
        let second = g.inline(&sub, "b", "net.", &[&first[0]]);
        g.adopt_weights(sub, "net.");
        assert_eq!((first[0].as_str(), second[0].as_str()), ("a/y", "b/y"));
        // Every value is produced once.
        let mut produced: Vec<&String> = g.nodes.iter().flat_map(|n| &n.output).collect();
        let n = produced.len();
        produced.sort();
        produced.dedup();
        assert_eq!(produced.len(), n);
        // The second copy reads the first's output and the shared weight.
        let mul_b = g
            .nodes
            .iter()
            .find(|n| n.op_type == "Mul" && n.name.starts_with("b/"))
            .unwrap();
        assert_eq!(mul_b.input, ["a/y", "net.w"]);
        let names: Vec<&str> = g.initializers.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"net.w"));
        assert_eq!(g.parameters(), 3);
    }

    #[test]
    fn branches_number_their_values_after_the_outer_graph() {
        let mut g = Graph::new("outer", WeightType::F32);
        let a = g.scalar(1.0);
        let mut b = g.branch("then");
        let c = b.scalar(2.0);
        b.output(&c, "out", DataType::FLOAT, &[]);
        let body = g.close_branch(b);
        let d = g.scalar(3.0);
        assert_eq!(body.output.len(), 1);
        let names: Vec<&str> = g.initializers.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, [a.as_str(), c.as_str(), d.as_str()]);
        assert!(a != c && c != d && a != d);
    }
}
