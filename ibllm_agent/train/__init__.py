"""Training: the paper's two phases (pretrain on image-caption pairs, instruction finetune), the
ImageBind alignment stage used to build the toy model, and the synthetic toy world itself.

Modules are imported on demand (`ibllm_agent.train.toy_world`, `ibllm_agent.train.finetune`, ...);
nothing here is loaded by `import ibllm_agent`.
"""
