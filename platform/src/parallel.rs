//! Work split over the machine's cores with scoped threads: one chunk per core, at least a
//! minimum size each, the last chunk on the calling thread (no thread at all for one chunk).

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn chunk_len(len: usize, min_chunk: usize) -> usize {
    len.div_ceil(cores()).max(min_chunk).max(1)
}

/// `f` of each chunk of `items`, in the chunks' order.
pub fn map_chunks<T: Sync, R: Send>(
    items: &[T],
    min_chunk: usize,
    f: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    let per = chunk_len(items.len(), min_chunk);
    if items.len() <= per {
        return vec![f(items)];
    }
    let chunks: Vec<&[T]> = items.chunks(per).collect();
    let (last, others) = chunks.split_last().expect("more than one chunk");
    let f = &f;
    std::thread::scope(|scope| {
        let spawned: Vec<_> = others
            .iter()
            .map(|&chunk| scope.spawn(move || f(chunk)))
            .collect();
        let own = f(last);
        let mut out: Vec<R> = spawned
            .into_iter()
            .map(|t| t.join().expect("a worker thread panicked"))
            .collect();
        out.push(own);
        out
    })
}

/// `f` on each chunk of `items`, changing them in place.
pub fn for_each_chunk_mut<T: Send>(items: &mut [T], min_chunk: usize, f: impl Fn(&mut [T]) + Sync) {
    let per = chunk_len(items.len(), min_chunk);
    if items.len() <= per {
        return f(items);
    }
    let f = &f;
    let mut chunks: Vec<&mut [T]> = items.chunks_mut(per).collect();
    let last = chunks.pop().expect("more than one chunk");
    std::thread::scope(|scope| {
        for chunk in chunks {
            scope.spawn(move || f(chunk));
        }
        f(last);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_everything_once_in_order() {
        for n in [0usize, 1, 7, 100, 10_001] {
            let items: Vec<usize> = (0..n).collect();
            let parts = map_chunks(&items, 3, |c| c.to_vec());
            assert!(parts.len() <= cores().max(1), "{n}: {} chunks", parts.len());
            assert_eq!(parts.concat(), items, "{n}");
            assert_eq!(
                map_chunks(&items, n + 1, |c| c.len()),
                vec![n],
                "one chunk below the minimum"
            );
            let mut doubled = items.clone();
            for_each_chunk_mut(&mut doubled, 3, |c| c.iter_mut().for_each(|x| *x *= 2));
            assert_eq!(
                doubled,
                items.iter().map(|x| x * 2).collect::<Vec<_>>(),
                "{n}"
            );
        }
    }
}
