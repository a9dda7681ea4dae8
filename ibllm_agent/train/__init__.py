"""Training: the paper's two phases (pretrain on image-caption pairs, instruction finetune: `adapter`,
`datasets`, `cli`), the ImageBind alignment and the from-scratch LLaMA used to build the toy model
(`bind_encoders`, `language_model`), the loop they share (`engine`), and the toy world as training and
evaluation data (`toy_data`, `toy_eval`; the world itself is `ibllm_agent.toy`).

Modules are imported on demand (`ibllm_agent.train.engine`, `ibllm_agent.train.adapter`, ...);
nothing here is loaded by `import ibllm_agent`.
"""
