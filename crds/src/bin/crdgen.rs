//! Prints the ApiDatasource CRD as YAML: `cargo run -p sidekey-crds --bin crdgen > crds/apidatasource.yaml`.

fn main() {
    print!("{}", sidekey_crds::crd_yaml());
}
