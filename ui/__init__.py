"""The Streamlit app (`ibllm ui`, or `streamlit run ui/app.py`) and its helper modules."""
