//! Writing ONNX with onnx-protobuf: [`graph`] builds a graph from standard ops, [`model_file`]
//! turns it into a `.onnx` file (with external data when it would pass protobuf's 2 GiB) and
//! reads one back for `inspect` and `--patch`.

pub mod graph;
pub mod model_file;

pub use graph::{Dim, Graph, WeightType};

/// A dense f32 array in row-major order: weights on their way from safetensors into a graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl Array {
    /// An array; `data` must hold the product of `shape` values.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// An array of one repeated value.
    pub fn filled(shape: Vec<usize>, value: f32) -> Self {
        let n = shape.iter().product();
        Self::new(shape, vec![value; n])
    }

    /// The same values under another shape of the same size.
    pub fn reshaped(&self, shape: Vec<usize>) -> Self {
        Self::new(shape, self.data.clone())
    }

    /// The transpose of a matrix.
    pub fn transposed(&self) -> Self {
        assert_eq!(self.shape.len(), 2, "transposing a {:?} array", self.shape);
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        Self::new(vec![c, r], out)
    }

    /// Rows of `self` followed by rows of `other` (same trailing shape).
    pub fn concat_rows(&self, other: &Array) -> Self {
        assert_eq!(self.shape[1..], other.shape[1..]);
        let mut shape = self.shape.clone();
        shape[0] += other.shape[0];
        let mut data = self.data.clone();
        data.extend_from_slice(&other.data);
        Self::new(shape, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_and_rows() {
        let a = Array::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(a.transposed().data, vec![1., 4., 2., 5., 3., 6.]);
        assert_eq!(a.transposed().shape, vec![3, 2]);
        assert_eq!(a.concat_rows(&a).shape, vec![4, 3]);
        assert_eq!(a.concat_rows(&a).data[6..], a.data[..]);
    }
}
