"""From a trained model to bytes and back: folding factors, GPTQ with clip search, packing, compression, budget
fitting and the `.alrt` artifact format (see DESIGN.md)."""
