"""Built-in stages. Each module holds a pure algorithm function, a typed Params model and a thin Stage class."""
