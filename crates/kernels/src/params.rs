//! Convolution parameters (PyTorch's `nn.Conv2d` / `nn.ConvTranspose2d` arguments, groups = 1,
//! the same value for both spatial axes) and the output-size rules that go with them.

/// Parameters of a 2D convolution: `y = conv2d(x, w)` with `x: [b, c_in, h, w]` and
/// `w: [c_out, c_in, kh, kw]` (PyTorch layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvParams {
    /// Step between output positions (>= 1).
    pub stride: usize,
    /// Zeros added on every side of the input.
    pub padding: usize,
    /// Step between kernel taps (>= 1); 1 for an ordinary convolution.
    pub dilation: usize,
}

impl Default for ConvParams {
    fn default() -> Self {
        Self { stride: 1, padding: 0, dilation: 1 }
    }
}

impl ConvParams {
    /// Output size along one axis for an input of `input` and a kernel of `kernel`
    /// (PyTorch's floor rule), or `None` when the kernel does not fit the padded input or a
    /// parameter is zero.
    pub fn output_size(&self, input: usize, kernel: usize) -> Option<usize> {
        if self.stride == 0 || self.dilation == 0 || kernel == 0 {
            return None;
        }
        let span = self.dilation * (kernel - 1) + 1;
        let padded = input + 2 * self.padding;
        (padded >= span).then(|| (padded - span) / self.stride + 1)
    }
}

/// Parameters of a 2D transposed convolution: `y = conv_transpose2d(x, w)` with
/// `x: [b, c_in, h, w]` and `w: [c_in, c_out, kh, kw]` (PyTorch layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvTransposeParams {
    /// Stride of the convolution this one transposes (>= 1).
    pub stride: usize,
    /// Padding of the convolution this one transposes: rows/cols removed on every side.
    pub padding: usize,
    /// Extra rows/cols added at the bottom/right; must be < max(stride, dilation) as in PyTorch.
    pub output_padding: usize,
    /// Step between kernel taps (>= 1).
    pub dilation: usize,
}

impl Default for ConvTransposeParams {
    fn default() -> Self {
        Self { stride: 1, padding: 0, output_padding: 0, dilation: 1 }
    }
}

impl ConvTransposeParams {
    /// Output size along one axis: `(input - 1) * stride - 2 * padding + dilation * (kernel - 1)
    /// + output_padding + 1`, or `None` when that is not positive or a parameter is invalid.
    pub fn output_size(&self, input: usize, kernel: usize) -> Option<usize> {
        if self.stride == 0
            || self.dilation == 0
            || kernel == 0
            || input == 0
            || self.output_padding >= self.stride.max(self.dilation)
        {
            return None;
        }
        let full =
            (input - 1) * self.stride + self.dilation * (kernel - 1) + self.output_padding + 1;
        (full > 2 * self.padding).then(|| full - 2 * self.padding)
    }

    /// The convolution that this transposed convolution is the adjoint of.
    pub fn as_conv(&self) -> ConvParams {
        ConvParams { stride: self.stride, padding: self.padding, dilation: self.dilation }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_output_size_follows_pytorch() {
        let p = ConvParams { stride: 2, padding: 3, dilation: 1 };
        assert_eq!(p.output_size(224, 7), Some(112));
        assert_eq!(p.output_size(11, 7), Some(6));
        let p = ConvParams { stride: 2, padding: 0, dilation: 1 };
        assert_eq!(p.output_size(7, 1), Some(4));
        assert_eq!(p.output_size(2, 3), None);
        assert_eq!(ConvParams { stride: 0, ..p }.output_size(7, 1), None);
        let p = ConvParams { stride: 1, padding: 2, dilation: 2 };
        assert_eq!(p.output_size(9, 3), Some(9));
    }

    #[test]
    fn conv_transpose_output_size_follows_pytorch() {
        let p = ConvTransposeParams { stride: 2, padding: 1, output_padding: 0, dilation: 1 };
        assert_eq!(p.output_size(7, 4), Some(14));
        let p = ConvTransposeParams { stride: 3, padding: 1, output_padding: 2, dilation: 1 };
        assert_eq!(p.output_size(5, 3), Some(15));
        // output_padding must be smaller than stride or dilation.
        let p = ConvTransposeParams { stride: 2, padding: 0, output_padding: 2, dilation: 1 };
        assert_eq!(p.output_size(5, 3), None);
        assert_eq!(p.as_conv(), ConvParams { stride: 2, padding: 0, dilation: 1 });
    }
}
