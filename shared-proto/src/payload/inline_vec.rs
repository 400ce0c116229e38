//! A small vector for the msgpack readers' bookkeeping: the lexer's open
//! containers, and the routing view's fields, keys and render stack.
//!
//! The first `N` elements live inline, so a typical payload's reading
//! allocates nothing; past them everything moves to one heap vector, which
//! grows only with what the input itself holds. It owns nothing else: no
//! I/O, and no indexing that can panic.

/// A vector that keeps its first `N` elements inline and moves everything to
/// the heap once it outgrows them, so its contents are always one slice.
#[derive(Debug, Clone)]
pub(super) struct InlineVec<T: Copy + Default, const N: usize> {
    inline: [T; N],
    len: usize,
    heap: Option<Vec<T>>,
}

impl<T: Copy + Default, const N: usize> InlineVec<T, N> {
    pub(super) fn new() -> Self {
        InlineVec {
            inline: [T::default(); N],
            len: 0,
            heap: None,
        }
    }

    pub(super) fn len(&self) -> usize {
        match &self.heap {
            Some(heap) => heap.len(),
            None => self.len,
        }
    }

    // Only the tests ask; the readers look at `len`.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn as_slice(&self) -> &[T] {
        match &self.heap {
            Some(heap) => heap,
            None => self.inline.get(..self.len).unwrap_or_default(),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        match &mut self.heap {
            Some(heap) => heap,
            None => self.inline.get_mut(..self.len).unwrap_or_default(),
        }
    }

    pub(super) fn push(&mut self, value: T) {
        if let Some(heap) = &mut self.heap {
            heap.push(value);
            return;
        }
        if let Some(slot) = self.inline.get_mut(self.len) {
            *slot = value;
            self.len += 1;
            return;
        }
        let mut heap = Vec::with_capacity(N * 2);
        heap.extend_from_slice(self.as_slice());
        heap.push(value);
        self.heap = Some(heap);
    }

    pub(super) fn pop(&mut self) -> Option<T> {
        match &mut self.heap {
            Some(heap) => heap.pop(),
            None => {
                self.len = self.len.checked_sub(1)?;
                self.inline.get(self.len).copied()
            }
        }
    }

    pub(super) fn last_mut(&mut self) -> Option<&mut T> {
        self.as_mut_slice().last_mut()
    }

    pub(super) fn truncate(&mut self, length: usize) {
        match &mut self.heap {
            Some(heap) => heap.truncate(length),
            None => self.len = self.len.min(length),
        }
    }
}

impl<T: Copy + Default, const N: usize> FromIterator<T> for InlineVec<T, N> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut vec = InlineVec::new();
        for value in iter {
            vec.push(value);
        }
        vec
    }
}
