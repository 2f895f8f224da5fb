"""The Streamlit app: `longheads app`, or `streamlit run` on this package's app.py."""
