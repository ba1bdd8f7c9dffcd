//! A file whose `write` calls return once the bytes are copied into a block: full blocks go to a writer
//! thread, so the kernel's copy into the page cache (a third of a conversion's time on tmpfs) overlaps the
//! serialization instead of following it.
//!
//! It reports its position (`stream_position`) but cannot seek: the MCAP writer is run with seeking disabled
//! (it buffers each chunk and writes it whole).
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// See the module docs.
pub(crate) struct BackgroundFile {
    block: Vec<u8>,
    block_size: usize,
    pos: u64,
    to_writer: Option<SyncSender<Vec<u8>>>,
    /// Written blocks come back for reuse (fresh large allocations cost page faults).
    recycled: Receiver<Vec<u8>>,
    writer: Option<JoinHandle<io::Result<File>>>,
}

impl BackgroundFile {
    /// Starts the writer thread for `file`; at most `depth` blocks of `block_size` bytes wait for it.
    pub(crate) fn new(file: File, block_size: usize, depth: usize) -> io::Result<Self> {
        let (to_writer, blocks) = sync_channel::<Vec<u8>>(depth);
        let (give_back, recycled) = sync_channel::<Vec<u8>>(depth + 2);
        let writer = std::thread::Builder::new()
            .name("bag-writer".into())
            .spawn(move || {
                let mut file = file;
                for mut b in blocks {
                    file.write_all(&b)?;
                    b.clear();
                    let _ = give_back.try_send(b);
                }
                Ok(file)
            })?;
        Ok(Self {
            block: Vec::with_capacity(block_size),
            block_size,
            pos: 0,
            to_writer: Some(to_writer),
            recycled,
            writer: Some(writer),
        })
    }

    /// Hands the current block to the writer thread.
    fn send_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let next = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.block_size));
        let full = std::mem::replace(&mut self.block, next);
        let sent = self.to_writer.as_ref().map(|tx| tx.send(full).is_ok());
        if sent == Some(true) {
            Ok(())
        } else {
            // The thread stopped: it failed; its error says why.
            Err(self.join().err().unwrap_or_else(|| {
                io::Error::other("the background writer stopped before the file was finished")
            }))
        }
    }

    fn join(&mut self) -> io::Result<File> {
        self.to_writer = None;
        match self.writer.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the background writer panicked"))),
            None => Err(io::Error::other("the background writer already finished")),
        }
    }

    /// Writes what is buffered, waits for the writer thread and returns the file.
    pub(crate) fn finish(mut self) -> io::Result<File> {
        self.send_block()?;
        self.join()
    }
}

impl Write for BackgroundFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let room = self.block_size - self.block.len();
            let n = room.min(rest.len());
            self.block.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.block.len() >= self.block_size {
                self.send_block()?;
            }
        }
        self.pos += data.len() as u64;
        Ok(data.len())
    }

    /// Buffered bytes reach the writer thread with the next full block or at [`BackgroundFile::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for BackgroundFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        match to {
            SeekFrom::Current(0) => Ok(self.pos),
            SeekFrom::Start(p) if p == self.pos => Ok(self.pos),
            SeekFrom::End(0) => Ok(self.pos),
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a background-written file only reports its position",
            )),
        }
    }
}

impl Drop for BackgroundFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.send_block();
            let _ = self.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_and_position_is_tracked() {
        let dir = std::env::temp_dir().join(format!("vlm3d-bgfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        let mut w = BackgroundFile::new(File::create(&path).unwrap(), 7, 2).unwrap();
        let mut expect = Vec::new();
        for i in 0..100u8 {
            let piece: Vec<u8> = (0..(i % 13))
                .map(|j| i.wrapping_mul(31).wrapping_add(j))
                .collect();
            w.write_all(&piece).unwrap();
            expect.extend_from_slice(&piece);
            assert_eq!(w.stream_position().unwrap(), expect.len() as u64);
        }
        assert!(w.seek(SeekFrom::Start(0)).is_err());
        w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expect);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
