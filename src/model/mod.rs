//! The network: Qwen2-VL in candle ([`qwen2vl`]: config, pre-processing, vision tower, text decoder, chat
//! pipeline, PEFT adapter files), LoRA adapters ([`lora`]) and the merged [`export`], the box queries and
//! [`box_head`], and the images + prompt → boxes [`detector`]. [`cpu`] holds the CPU kernels the layers run on.
pub mod box_head;
pub mod cpu;
pub mod detector;
pub mod device;
pub mod export;
pub mod lora;
pub mod qwen2vl;
