"""The converted attention layers: `base` (the q/k/v/o plumbing every method's layer shares), `hybrid` (a
sliding-window softmax branch beside a recurrent branch, mixed), and one module per layer family (`liger`,
`lolcats`). The registry (`liger.methods`) says which method uses which layer."""
