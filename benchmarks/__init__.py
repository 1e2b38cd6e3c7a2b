"""video_aot.benchmarks"""
