"""SQLite durability shared by the drivers: durable connections and the meta row, WAL checkpoints, fsyncs."""
