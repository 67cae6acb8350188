fn main() -> anyhow::Result<()> {
    skuflow_platform::component::main::<skuflow_notifier::Notifier>()
}
