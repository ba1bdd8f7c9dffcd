//! The network: Qwen2-VL in candle ([`qwen2vl`]), LoRA adapters ([`lora`]), the box head ([`box_head`]) and the
//! images + prompt → boxes [`detector`]; [`bench`] times one forward pass.
pub mod bench;
pub mod box_head;
pub mod detector;
pub mod fused;
pub mod lora;
pub mod qwen2vl;
pub mod sgemm;
