"""Quality indicators: one module per score (clip, reward, length, gpt), each writing scores/{indicator}.parquet."""
